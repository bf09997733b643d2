"""A model that attacks what is not its own, once it runs as rank 0 of a job (not in the login-node check).

Its one argument is a JSON file beside it: {"attacks": {...targets...}, "raise": bool}. Each attack's
outcome ("done", or "blocked: ERRNO") goes to attacks-out.json in the job directory (the model's
current directory). With "raise", the first attack (reading the secret) is not caught: the fit fails,
and the error must say why. The fit itself is examples/peak.py's.
"""

import errno
import json
import os
import signal
import socket
import sys
from pathlib import Path

import numpy as np
from bumps.names import Curve, FitProblem

settings = json.loads((Path(__file__).parent / sys.argv[1]).read_text())
targets = settings["attacks"]
if settings.get("at_import"):
    Path(targets["secret"]).read_text()  # on the login node, in the model check


def peak(x, height, center, width, background):
    return height * np.exp(-0.5 * ((x - center) / width) ** 2) + background


rng = np.random.default_rng(20261125)
x = np.linspace(-5.0, 5.0, 81)
y = peak(x, 2.0, 0.4, 0.9, 0.3) + rng.normal(0.0, 0.05, x.size)
model = Curve(peak, x, y, 0.05 * np.ones_like(x), height=1.0, center=0.0, width=1.0, background=0.0)
model.height.range(0.0, 5.0)
model.center.range(-2.0, 2.0)
model.width.range(0.1, 3.0)
model.background.range(-1.0, 1.0)
problem = FitProblem(model)


def _write_huge():
    with open("huge.bin", "wb") as fh:
        block = b"\0" * (1 << 20)
        for _ in range(targets["huge_mb"]):
            fh.write(block)


def _symlink():
    os.symlink(targets["secret"], "link-to-secret")
    return Path("link-to-secret").read_text()


ATTACKS = {
    "read the secret in the home directory": lambda: Path(targets["secret"]).read_text(),
    "read another job's result.json": lambda: Path(targets["other_result"]).read_text(),
    "overwrite another job's checkpoint": lambda: Path(targets["other_checkpoint"]).write_bytes(b"spoiled"),
    "write to the home directory": lambda: Path(targets["home_file"]).write_text("pwned"),
    "write to /tmp outside the job": lambda: Path(targets["tmp_file"]).write_text("pwned"),
    "follow a symlink out of the job directory": _symlink,
    "connect to a TCP port": lambda: socket.create_connection(
        ("127.0.0.1", targets["port"]), timeout=5
    ).close(),
    "bind a TCP port": lambda: socket.socket().bind(("127.0.0.1", 0)),
    "signal a process outside the job": lambda: os.kill(targets["victim_pid"], signal.SIGUSR1),
    "write a huge file": _write_huge,
}
done = False


def attack():
    global done
    in_job = (os.environ.get("PMI_RANK") or os.environ.get("SLURM_PROCID")) == "0"
    if done or not in_job:
        return
    done = True
    if settings.get("raise"):
        Path(targets["secret"]).read_text()  # uncaught: the fit fails here, and must say why
    outcomes = {}
    for name, act in ATTACKS.items():
        try:
            act()
            outcomes[name] = "done"
        except OSError as exc:
            outcomes[name] = f"blocked: {errno.errorcode.get(exc.errno, exc.errno)}"
    Path("attacks-out.json").write_text(json.dumps(outcomes, indent=2))


problem.setp_hook = attack
