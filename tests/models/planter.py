"""A model that attacks its own job directory, once it runs as rank 0 of a job (not in the model check).

It plants modules that would shadow mpi4py, numpy, the standard library and bumps_mpi itself for the next
unconfined Python started in its job directory, forges the request and the script the unconfined side once
read back (job.json with the sandbox off, run.sbatch), and tries to write its control directory. Every
planted module, if ever imported, leaves a marker in MARKERS (outside the job directory) and says so on
stderr; what each write to the control directory did goes to planted-out.json.

Arguments: DELAY (slow_peak's, seconds per evaluation), MARKERS (a directory), MODE:
- "plant": plant and go on (slowly: the test stops the run, then resumes it);
- "die": plant, and once a checkpoint exists rank 0 dies unreported (the batch script's post-mortem runs);
  a run after that (a resume) goes on to the end;
- "requeue": plant, then rank 0 exits 3 ("requeue me") without a checkpoint.
"""

import errno
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from slow_peak import problem  # noqa: E402  (beside it; its first argument is the delay)

MARKERS, MODE = Path(sys.argv[2]), sys.argv[3]
PLANTED = (
    "mpi4py.py",
    "numpy.py",
    "socket.py",
    "usercustomize.py",
    "sitecustomize.py",
    "bumps_mpi/__init__.py",
)
CODE = """import os, sys
try:
    with open(os.path.join({markers!r}, {name!r}.replace("/", "-") + "-" + str(os.getpid())), "w") as f:
        f.write(" ".join(sys.argv))
except OSError:
    pass
print("PLANTED CODE RAN: {name}", file=sys.stderr, flush=True)
"""
planted = False


def _try(write):
    try:
        write()
        return "done"
    except OSError as exc:
        return f"blocked: {errno.errorcode.get(exc.errno, exc.errno)}"


def plant():
    here = Path.cwd()  # the job directory
    for name in PLANTED:
        (here / name).parent.mkdir(exist_ok=True)
        (here / name).write_text(CODE.format(markers=str(MARKERS), name=name))
    forged = json.loads((here / "job.json").read_text())
    forged.update(sandbox={"level": "off"}, max_requeues=99)
    (here / "job.json").write_text(json.dumps(forged))
    (here / "run.sbatch").write_text(f"#!/bin/bash\ntouch {MARKERS}/forged-script-ran\n")
    (here / "state.json").write_text(json.dumps({"state": "COMPLETED", "exit_code": "0:0"}))
    if (here / "local.out").exists():  # a local run's log: a pipe instead, for the next start to open
        (here / "local.out").unlink()
        os.mkfifo(here / "local.out")
    secret = MARKERS.parent / "secret.txt"  # the user's, outside the job: links to it in place of job files
    for name in ("ranks.json", "error.json"):
        (here / name).unlink(missing_ok=True)
        os.symlink(secret, here / name)
    control = here.parent / ".bumps-control" / here.name
    outcomes = {
        name: _try(lambda name=name: (control / name).write_text("{}"))
        for name in ("request.json", "run.sbatch", "local.json", "exit-status", "planted.txt")
    }
    outcomes["replace the control directory"] = _try(lambda: os.rename(control, f"{control}.moved"))
    (here / "planted-out.json").write_text(json.dumps(outcomes, indent=2))


def attack():
    global planted
    if (os.environ.get("PMI_RANK") or os.environ.get("SLURM_PROCID")) != "0":
        return
    if not planted:
        planted = True
        plant()
    here = Path.cwd()
    if MODE == "requeue":
        os._exit(3)
    if MODE == "die" and (here / "checkpoint.h5").exists() and not (here / "died-once").exists():
        (here / "died-once").write_text("")
        os._exit(7)


problem.setp_hook = attack
