"""tests/models/slow_peak.py's fit, whose rank 0 also leaves 300 small files in its job directory (notes/):
a job whose results take a while to upload, so that a test can stop the controller in the middle."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from slow_peak import problem  # noqa: E402

written = False


def notes():
    global written
    if written or (os.environ.get("PMI_RANK") or os.environ.get("SLURM_PROCID")) != "0":
        return
    written = True
    Path("notes").mkdir(exist_ok=True)
    for i in range(300):
        Path(f"notes/{i:03d}.txt").write_text(f"note {i}\n")


problem.setp_hook = notes
