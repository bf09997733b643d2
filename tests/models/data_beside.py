"""tests/models/peak_file.py's peak, whose data file is named in where.txt beside this model rather than
given as an argument: the sandbox opens it only when the user names it (--read, or sandbox_read)."""

import sys
from pathlib import Path

sys.argv[1:] = [(Path(__file__).parent / "where.txt").read_text().strip()]
from peak_file import problem  # noqa: E402, F401  (beside it)
