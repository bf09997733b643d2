"""A model that, once it runs as rank 0 of a job, forges its job's records and plants links and scripts
in its job directory: the service must neither act on nor serve any of it.

Its arguments: the delay of tests/models/slow_peak.py (uploaded beside it), then a JSON file beside it:
{"victim": PID, "secret": PATH}. Rank 0, at its first
evaluation: rank and supervisor records naming the victim process (with its true start time), a cached
state.json saying COMPLETED, links to the secret in export/, an SVG that loads a script, and a pipe.
The fit itself is slow_peak's, slow enough to be cancelled.
"""

import json
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from slow_peak import problem  # noqa: E402  (uploaded beside it; its first argument is the delay)

settings = json.loads((Path(__file__).parent / sys.argv[2]).read_text())
done = False


def forge():
    global done
    if done or (os.environ.get("PMI_RANK") or os.environ.get("SLURM_PROCID")) != "0":
        return
    done = True
    victim = settings["victim"]
    fields = Path(f"/proc/{victim}/stat").read_bytes().rsplit(b")", 1)[1].split()
    record = {"pid": victim, "start": int(fields[19]), "host": socket.gethostname()}
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    record["boot"] = boot
    Path("ranks.json").write_text(json.dumps([{**record, "rank": 0}, {**record, "rank": 1}]))
    local = json.loads(Path("local.json").read_text()) if Path("local.json").exists() else {}
    Path("local.json").write_text(json.dumps({**local, "supervisor": record, "launcher": record}))
    Path("state.json").write_text(json.dumps({"state": "COMPLETED", "exit_code": "0:0"}))
    Path("export").mkdir(exist_ok=True)
    os.symlink(settings["secret"], "export/stolen.txt")
    os.symlink(settings["secret"], "slurm-1.out")
    Path("export/evil.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg"><script href="evil.js"/></svg>'
    )
    Path("export/evil.js").write_text("fetch('/api/v1/me')")
    try:
        os.mkfifo("export/pipe.txt")
    except OSError:
        pass


problem.setp_hook = forge
