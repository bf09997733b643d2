"""The C compiler as confined libraries run it (CC): `-o TARGET` is written beside TARGET, then renamed.

sasmodels compiles a model into the user's shared cache when the library is
missing there; ranks and fits of the same user that start together compile
the same model at once, and one of them must never load another's half-written
file. The real compiler is $BUMPS_MPI_CC (the user's CC, or cc).
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import subprocess
import sys


def main(argv: list[str]) -> int:
    compiler = shlex.split(os.environ.get("BUMPS_MPI_CC") or "cc")
    args = list(argv)
    target = None
    if "-o" in args[:-1]:
        where = args.index("-o") + 1
        target = args[where]
        # unique across the nodes sharing the cache (a pid is unique on one host only)
        args[where] = f"{target}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    done = subprocess.run([*compiler, *args], check=False).returncode
    if target is not None:
        partial = args[args.index("-o") + 1]
        if done == 0:
            os.replace(partial, target)
        elif os.path.exists(partial):
            os.unlink(partial)
    return done


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
