"""Sphinx directives that write the references from the code, so that they never drift:

- ``site-settings``: every setting of the site profile (bumps_mpi.config.KEYS), with its default and
  its meaning from slurm/defaults.toml, the one place where defaults live; a setting it does not
  describe fails the build.
- ``service-settings``: the job controller's configuration file, as bumps_mpi.service.settings
  documents it.
The service's OpenAPI description is written to _generated/openapi.json from the application itself
when the build starts, for sphinxcontrib-openapi's ``openapi`` directive.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective

GENERATED = Path(__file__).parent.parent / "_generated"


def documented_settings(text: str) -> dict[str, tuple[str, str]]:
    """key -> (default as written, meaning) from defaults.toml's lines: `key = value  # meaning` with
    its comment's continuation lines, and `# key: meaning` for a setting that has no default."""
    found: dict[str, tuple[str, str]] = {}
    last = None
    for line in text.splitlines():
        setting = re.match(r"^(\w+)\s*=\s*(.*?)\s*(?:#\s*(.*))?$", line)
        undefaulted = re.match(r"^#\s+(\w+):\s+(.*)$", line)
        continued = re.match(r"^\s+#\s*(.*)$", line)
        if setting:
            last = setting.group(1)
            found[last] = (setting.group(2), setting.group(3) or "")
        elif undefaulted:
            last = undefaulted.group(1)
            found[last] = ("", undefaulted.group(2))
        elif continued and last:
            value, meaning = found[last]
            found[last] = (value, f"{meaning} {continued.group(1)}".strip())
        else:
            last = None
    return found


def _row(cells: list[nodes.Node]) -> nodes.row:
    row = nodes.row()
    for cell in cells:
        row += nodes.entry("", nodes.paragraph("", "", cell))
    return row


class SiteSettings(SphinxDirective):
    """A table of every site setting: name, type, default, meaning."""

    def run(self) -> list[nodes.Node]:
        from bumps_mpi.config import KEYS, slurm_dir

        path = slurm_dir() / "defaults.toml"
        documented = documented_settings(path.read_text())
        missing = [key for key in KEYS if key not in documented or not documented[key][1]]
        if missing:
            raise ExtensionError(f"{path} does not describe the settings {', '.join(missing)}")
        table = nodes.table(classes=["settings"])
        group = nodes.tgroup(cols=4)
        table += group
        for width in (18, 8, 20, 54):
            group += nodes.colspec(colwidth=width)
        head, body = nodes.thead(), nodes.tbody()
        group += [head, body]
        head += _row([nodes.Text(name) for name in ("setting", "type", "default", "meaning")])
        for key, kind in KEYS.items():
            value, meaning = documented[key]
            default = nodes.literal(value, value) if value else nodes.Text("(none)")
            body += _row([nodes.literal(key, key), nodes.Text(kind.__name__), default, nodes.Text(meaning)])
        return [table]


class ServiceSettings(SphinxDirective):
    """The job controller's configuration file, every section and key, as its module documents it."""

    def run(self) -> list[nodes.Node]:
        from bumps_mpi.service import settings

        text = (settings.__doc__ or "").split("\n\n", 1)[1].strip()
        block = nodes.literal_block(text, text, language="toml")
        return [block]


def write_openapi(app: Sphinx) -> None:
    """The HTTP API's description, from the application (in a scratch data directory)."""
    from bumps_mpi.service.app import create_app
    from bumps_mpi.service.settings import ServiceConfig

    umask = os.umask(0o022)  # create_app makes the process's files owner-only: not the site's pages
    try:
        with tempfile.TemporaryDirectory() as scratch:
            spec = create_app(ServiceConfig(data_dir=Path(scratch))).openapi()
    finally:
        os.umask(umask)
    GENERATED.mkdir(exist_ok=True)
    target = GENERATED / "openapi.json"
    text = json.dumps(spec, indent=1, sort_keys=True)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("site-settings", SiteSettings)
    app.add_directive("service-settings", ServiceSettings)
    app.connect("builder-inited", write_openapi)
    return {"parallel_read_safe": True, "version": "1"}
