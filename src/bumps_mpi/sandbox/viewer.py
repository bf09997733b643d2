"""`bumps-submit open JOB`: Bumps' own viewer (its webview) on a finished fit's session file, confined.

The session file was written by the job, so it may have been written by the
model; loading it runs whatever it deserializes to. Opening is therefore the
user's own act on their own fit, and the viewer runs confined as the job's
ranks were (the request's sandbox, from the control directory): it reads the
Python environment, the system and the model's place, writes only the job
directory (Bumps saves the session back there) and the user's library cache,
and may listen on its one port and connect nowhere. Landlock limits the port, not
the address: Bumps listens on 127.0.0.1, but code in the session could listen on
that port on every address; and Bumps' webview has no login of its own, so other
accounts on this machine can reach it while it runs. Hence: your own fits only.
The viewer always requires the full sandbox (unless the fit itself ran with the
sandbox off): on a machine without it, `open` refuses.
"""

from __future__ import annotations

import os
import sys

from ..jobdir import SESSION_FILE, JobDir


def command(job: JobDir, port: int) -> list[str]:
    """The viewer's process: a safe-path Python (nothing of the job directory on its import path)."""
    return [sys.executable, "-P", "-m", "bumps_mpi.sandbox.viewer", str(job.path), str(port)]


def main(argv: list[str]) -> None:
    from . import policy as sandbox

    job, port = JobDir(argv[0]), int(argv[1])
    asked = job.spec.get("sandbox") or {}  # the request, which the model cannot write
    model_read, _ = sandbox.model_paths(job.spec["model"])
    confined = sandbox.apply(
        sandbox.Policy(
            level="off" if asked.get("level") == "off" else "require",  # a pickle from the job: confined
            read=[*sandbox.python_paths(), *sandbox.SYSTEM_READ, *model_read, *asked.get("read", [])],
            write=[*sandbox.SYSTEM_WRITE, *asked.get("write", [])],
            restrict_network=True,
            max_file_mb=int(asked.get("max_file_mb", 16384)),
            cache=asked.get("cache"),
            bind_ports=[port],
        ),
        job.path,
    )
    print(f"bumps-submit open: sandbox {sandbox.describe(confined)}", file=sys.stderr, flush=True)
    os.chdir(job.path)
    from bumps.webview.server.cli import main as bumps

    sys.argv = ["bumps", "--read-session", str(job.path / SESSION_FILE), "--headless", "--port", str(port)]
    bumps()


if __name__ == "__main__":
    main(sys.argv[1:])
