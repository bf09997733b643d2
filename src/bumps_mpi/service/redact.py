"""What the job controller shows without its own paths: a user sees their files as they sent them, and
nothing of where the service keeps its data, its Python or its source (a traceback names modules, not
the directories they are installed in)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from ..text import plain


class Redactor:
    """Paths of the service's host taken out of text: a fit's own files relative to the fit, the data
    directory and the Python installation named, never spelled."""

    def __init__(self, data_dir: Path):
        fits = re.escape(str(data_dir / "fits"))
        self._inside = re.compile(fits + r"/[0-9a-f]+/(?:\.bumps-control/)?(model|job)(/|\b)")
        self._data = re.compile(re.escape(str(data_dir)) + r"\S*")
        installed = {p for p in sys.path if p.startswith("/") and len(p) > 1} | {
            str(Path(__file__).resolve().parents[2])  # the package's own source (an editable install)
        }
        modules = sorted(installed, key=len, reverse=True)  # the longest first: site-packages in the venv
        self._modules = re.compile("(?:" + "|".join(re.escape(p) for p in modules) + r")(/|\b)")
        prefixes = sorted({sys.prefix, sys.base_prefix, sys.exec_prefix} - {"/", ""}, key=len, reverse=True)
        self._python = re.compile("(?:" + "|".join(re.escape(p) for p in prefixes) + r")(?=/|\b)")

    def text(self, text: str | None) -> str | None:
        """*text* without the service's paths and without terminal control sequences."""
        if text is None:
            return None
        text = self._inside.sub(self._fit_relative, text)
        text = self._data.sub("(the service's files)", text)
        text = self._modules.sub(_module_relative, text)  # ".../site-packages/bumps/x.py" -> "bumps/x.py"
        return plain(self._python.sub("(python)", text))

    @staticmethod
    def _fit_relative(match: re.Match) -> str:
        return "" if match.group(2) == "/" else f"the fit's {match.group(1)} directory"

    def value(self, value: Any) -> Any:
        """Every string in *value* (a record from JSON) as text() gives it."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value


def _module_relative(match: re.Match) -> str:
    """A file under the service's Python: named by its module path; the directory itself: named so."""
    return "" if match.group(1) == "/" else "(python)"
