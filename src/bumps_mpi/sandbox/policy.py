"""The sandbox: every process that runs a model confines itself to its own job, with Landlock, as the user.

A model is someone's Python code. Each rank of a job (before MPI starts and
before the model is imported), the model check and the figure drawing on the
login node confine themselves:

- files: read-only the Python environment, the system's libraries and
  configuration (/usr, /lib*, /etc, /opt, /proc, /sys, /dev), the model's
  directory and any path the site or the user names (`sandbox_read`, `--read`);
  read-write only their own directory (the job's, or the child's scratch
  directory), its private TMPDIR, the user's library cache (compiled kernels:
  bumps_mpi.sandbox.libraries), what the site or the user opens (`sandbox_write`,
  `--write`), /dev/shm (MPI's shared memory) and /dev/null.
  The user's home, other users' and other jobs' directories are out of reach
  unless named. A model in the home directory itself gets only its own file.
- network (ABI 4): no TCP bind or connect at all for a job on one node (MPI
  then talks over shared memory only: UCX_TLS=self,posix,sysv); a job on several
  nodes leaves TCP open, since MPI connects between nodes over it.
- scopes (ABI 6): no signal to a process outside the rank, no connection to
  an abstract Unix socket outside it.
- rlimits: no core dumps; no file larger than `sandbox_max_file_mb`.

Ranks confine themselves separately (srun and mpiexec start them), so the
shared-memory transports that read a sibling's memory or descriptors (cross-
memory attach, /proc/PID/fd) are switched off for MPICH and UCX, and Open MPI's.
Confining before MPI_Init means every thread MPI starts is confined too: Landlock
(ABI <= 7) restricts only the calling thread and the threads it starts later.

Levels: "require" refuses to run where the kernel lacks a feature the sandbox
needs here; "best-effort" (the default) applies what the kernel has and records
what it could not; "off" applies nothing. What was enforced is recorded.
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..records import Request
from . import devices, landlock, libraries

LEVELS = ("best-effort", "require", "off")
SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/opt", "/proc", "/sys", "/dev")
SYSTEM_WRITE = ("/dev/shm", "/dev/null")
TMP_DIR = "tmp"  # the private TMPDIR inside the sandbox's own directory
# One node: MPI over shared memory only, with no transport that reads a sibling rank's memory or fds
# (each rank is its own Landlock domain, and Landlock refuses ptrace-like access across domains).
SHARED_MEMORY_ONLY = {"UCX_TLS": "self,posix,sysv"}
NO_CROSS_PROCESS_ACCESS = {
    "MPIR_CVAR_CH4_CMA_ENABLE": "0",  # MPICH's cross-memory attach (process_vm_readv)
    "UCX_POSIX_USE_PROC_LINK": "n",  # UCX: named shared memory instead of /proc/PID/fd of the peer
    "OMPI_MCA_btl_sm_single_copy_mechanism": "none",  # Open MPI 5's shared memory BTL
    "OMPI_MCA_btl_vader_single_copy_mechanism": "none",  # Open MPI 4's
}


class SandboxError(UsageError):
    """The sandbox cannot be what `require` asks for here."""


@dataclass
class Policy:
    """What one confined process may do."""

    level: str = "best-effort"
    read: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)
    restrict_network: bool = True
    max_file_mb: int = 16384
    cache: str | None = None  # the user's library cache (bumps_mpi.sandbox.libraries), read-write
    bind_ports: list[int] = field(default_factory=list)  # TCP ports it may listen on (Bumps' viewer)
    connect_ports: list[int] = field(default_factory=list)  # TCP ports it may connect to (MPI, between nodes)
    node_tmp: str = ""  # a directory on this node's own disk for its private TMPDIR ($VARIABLES expanded)

    def needed_abi(self) -> int:
        """The Landlock ABI all of this needs: files with truncate (3), TCP (4), signals and sockets (6)."""
        return 6


MAX_PORTS = 4096  # one Landlock rule per port: a range a site means, not the whole port space


def port_range(text: str, where: str = "sandbox_mpi_ports") -> tuple[int, int]:
    """'40000-40999' as (40000, 40999): unprivileged ports, low to high, at most MAX_PORTS of them."""
    low, sep, high = str(text).partition("-")
    try:
        first, last = int(low), int(high)
    except ValueError:
        first = last = 0
    if not sep or not 1024 <= first <= last <= 65535 or last - first >= MAX_PORTS:
        raise UsageError(
            f"{where}={text!r}: give LOW-HIGH, TCP ports between 1024 and 65535, at most {MAX_PORTS} of them "
            "(e.g. 40000-40999)"
        )
    return first, last


def check_level(level: str, where: str = "--sandbox") -> str:
    if level not in LEVELS:
        raise UsageError(f"{where}={level!r}: use {', '.join(LEVELS)}")
    return level


def python_paths() -> list[str]:
    """What this Python reads its code from: its installation, its environment, every sys.path entry."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).resolve().parent)}
    paths.update(p for p in sys.path if p)
    return sorted({str(Path(p).resolve()) for p in paths if Path(p).exists()} | paths)


def model_paths(model: str | Path) -> tuple[list[str], str | None]:
    """What of the model's place to read: its directory, or only the file when that directory is the home
    directory (or above it), which would open everything in it. The second item is a note for the user."""
    model = Path(model).resolve()
    home = Path.home().resolve()
    if model.parent == home or model.parent in home.parents:
        note = (
            f"the model is in {model.parent}, which holds your home directory: only the model file is "
            "readable in the sandbox; put it in a directory of its own, or name data with --read"
        )
        return [str(model)], note
    return [str(model.parent)], None


def apply(policy: Policy, own_dir: Path) -> dict[str, Any]:
    """Confine this process (and what it starts) to *policy*; returns what was enforced and what was not.

    Must run before any other thread exists. Sends TMPDIR and the libraries' files
    to *own_dir*/tmp and the user's cache (bumps_mpi.sandbox.libraries). Under `require`, a kernel without
    what the policy needs is a SandboxError, and nothing is applied.
    """
    if policy.level == "off":
        return {"level": "off"}
    abi = landlock.abi_version()
    missing = []
    if abi < 1:
        missing.append("files (Landlock ABI 1: the kernel has no Landlock, or it is disabled)")
    if 1 <= abi < 3:
        missing.append("truncation (ABI 3)")
    if policy.restrict_network and abi < 4:
        missing.append("TCP (ABI 4)")
    if abi < 6:
        missing.append("signals and abstract Unix sockets (ABI 6)")
    if missing and policy.level == "require":
        raise SandboxError(
            f"sandbox=require: this kernel ({os.uname().release}) offers Landlock ABI {abi}, and the sandbox "
            f"needs ABI {policy.needed_abi()}; missing: {'; '.join(missing)}"
        )
    node_private = _node_private(policy.node_tmp)
    private = node_private or _private_dir(own_dir / TMP_DIR)
    cache = Path(policy.cache) if policy.cache else None
    cache_problem = None
    if cache is not None:
        try:
            libraries.make_cache(cache)
        except OSError as exc:  # a home the job cannot write: the libraries compile into the job instead
            cache_problem = f"library cache {cache}: {exc.strerror or exc}; kernels compiled per job"
            cache = None
    os.environ.update(libraries.environment(private, cache))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    limit = policy.max_file_mb << 20
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(
        resource.RLIMIT_FSIZE, (limit, limit if hard == resource.RLIM_INFINITY else min(limit, hard))
    )
    enforced: dict[str, Any] = {
        "level": policy.level,
        "abi": abi,
        "kernel": os.uname().release,
        "rlimits": {"core": 0, "file_size_mb": policy.max_file_mb},
        "missing": missing,
        **({"cache_problem": cache_problem} if cache_problem else {}),
    }
    if abi < 1:
        _seed_numba_cache(private / "numba")
        return enforced
    scopes = landlock.SCOPE_SIGNAL | landlock.SCOPE_ABSTRACT_UNIX_SOCKET
    ruleset = landlock.Ruleset(abi, handle_net=policy.restrict_network, scopes=scopes)
    read = [p for p in dict.fromkeys(policy.read) if ruleset.allow_path(p, landlock.READ)]
    wanted = [str(own_dir), *policy.write, *([str(cache)] if cache is not None else [])]
    wanted += [str(node_private)] if node_private is not None else []
    write = [p for p in dict.fromkeys(wanted) if ruleset.allow_path(p, (1 << 64) - 1)]
    bind, connect = set(policy.bind_ports), set(policy.connect_ports)  # MPI's: a thousand ports
    for port in sorted(bind | connect):
        access = (landlock.NET_BIND_TCP if port in bind else 0) | (
            landlock.NET_CONNECT_TCP if port in connect else 0
        )
        ruleset.allow_port(port, access)
    ruleset.restrict_self()
    _seed_numba_cache(private / "numba")  # confined: a link the model left there leads nowhere
    enforced.update(
        read=read,
        write=write,
        network=_network(policy, bool(ruleset.net)),
        scopes=(["signals", "abstract Unix sockets"] if ruleset.scopes else []),
        cache=str(cache) if cache is not None else None,
        tmp=str(private),
        opened=[p for p in write if p not in (str(own_dir), *SYSTEM_WRITE)],
    )
    return enforced


def _node_private(template: str) -> Path | None:
    """This process's own new directory on the node's disk, when *template* names a directory there
    ($SLURM_TMPDIR, /local/scratch): made with mkdtemp (owner only, never a path someone else left), and
    removed when the process ends. None when the template names nothing here: the job's tmp/ then."""
    import atexit
    import shutil
    import tempfile

    base = os.path.expandvars(template) if template else ""
    if not base or "$" in base or not os.path.isabs(base) or not os.path.isdir(base):
        return None
    job = os.environ.get("SLURM_JOB_ID") or "local"
    rank = os.environ.get("SLURM_PROCID") or os.environ.get("PMI_RANK") or "0"
    try:
        made = Path(tempfile.mkdtemp(prefix=f"bumps-mpi-{job}-{rank}-", dir=base))
    except OSError:  # full, or not ours to write: the job's own tmp/ serves
        return None
    atexit.register(shutil.rmtree, made, True)
    return made


def _network(policy: Policy, handled: bool) -> str:
    """What the sandbox enforced on TCP, in words."""
    if not handled:
        return "TCP not restricted"
    if policy.connect_ports:
        ports = f"{min(policy.connect_ports)}-{max(policy.connect_ports)}"
        return f"TCP bind and connect only on ports {ports} (MPI between nodes)"
    if policy.bind_ports:
        return "no TCP connect, TCP bind only on " + ", ".join(map(str, policy.bind_ports))
    return "no TCP bind or connect"


def _private_dir(path: Path) -> Path:
    """The process's private directory in its own (a job's, possibly written by its model before): a
    real directory, never a link or a file the model left there, which unconfined code would follow.
    The ranks of a job make it at the same moment: each step tolerates another rank's."""
    with contextlib.suppress(FileExistsError):
        path.mkdir()
    if not stat.S_ISDIR(os.lstat(path).st_mode):  # a link or a file in its place: removed, not followed
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise OSError(17, f"{path} is not a directory")
    return path


def _seed_numba_cache(cache: Path) -> None:
    """Copy numba's compiled code from the environment's __pycache__ into this sandbox's own cache.

    Confined, numba cannot write beside the package's source (read-only, rightly: a shared cache of
    machine code is what a hostile model would poison), so it would use the empty private cache and
    compile everything again, every job (refl1d: seconds on every rank). A private copy of what is
    there reads as fast, and whatever this job writes stays in it.
    """
    import hashlib
    import importlib.util
    import shutil

    if importlib.util.find_spec("numba") is None:
        return
    roots = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    for root in roots:
        for index in Path(root).glob("**/__pycache__/*.nbi"):
            source_dir = str(index.parent.parent)
            # numba's own layout for NUMBA_CACHE_DIR (UserProvidedCacheLocator): <dir name>_<sha1 of dir>
            target = cache / f"{os.path.basename(source_dir)}_{hashlib.sha1(source_dir.encode()).hexdigest()}"
            target.mkdir(parents=True, exist_ok=True)
            for path in index.parent.glob(f"{index.name.split('.py')[0]}*.nb[ic]"):
                if not (target / path.name).exists():
                    tmp = target / f".{path.name}.{os.getpid()}.tmp"
                    shutil.copyfile(path, tmp)
                    os.replace(tmp, target / path.name)  # ranks seeding at once never see half a file


def job_policy(spec: Request, nodes: int, control: Path | str) -> Policy:
    """The policy of a job's ranks, from the request (in the *control* directory, which the ranks may read
    but never write: the stop and cancel requests are there) and the number of nodes it runs on."""
    asked = spec.get("sandbox") or {}
    model_read, _ = model_paths(spec["model"])
    gpus = devices.gpu_device_files() if asked.get("gpus") else []  # a GPU is driven by ioctl
    ports = mpi_ports(spec) if nodes > 1 else []
    return Policy(
        level=asked.get("level", "off"),
        read=[*python_paths(), *SYSTEM_READ, *model_read, str(control), *asked.get("read", [])],
        write=[*SYSTEM_WRITE, *asked.get("write", []), *gpus],
        restrict_network=nodes <= 1 or bool(ports),  # a request from before the port range: TCP open
        max_file_mb=int(asked.get("max_file_mb", 16384)),
        cache=asked.get("cache"),
        bind_ports=ports,
        connect_ports=ports,
        node_tmp=str(asked.get("node_tmp") or ""),
    )


def mpi_ports(spec: Request) -> list[int]:
    """The TCP ports the request gives MPI between nodes (none in a request from before they were)."""
    asked = (spec.get("sandbox") or {}).get("mpi_ports")
    if not isinstance(asked, list) or len(asked) != 2:
        return []
    first, last = port_range(f"{asked[0]}-{asked[1]}")
    return list(range(first, last + 1))


def mpi_environment(nodes: int, ports: list[int] | None = None) -> dict[str, str]:
    """Environment for MPI in confined ranks: no cross-rank memory access; one node: shared memory only;
    several: TCP only on *ports* (UCX, libfabric and Open MPI each told the range)."""
    if nodes <= 1:
        return {**NO_CROSS_PROCESS_ACCESS, **SHARED_MEMORY_ONLY}
    if not ports:
        return dict(NO_CROSS_PROCESS_ACCESS)
    low, high = min(ports), max(ports)
    return {
        **NO_CROSS_PROCESS_ACCESS,
        "UCX_TCP_PORT_RANGE": f"{low}-{high}",
        "FI_TCP_PORT_LOW_RANGE": str(low),
        "FI_TCP_PORT_HIGH_RANGE": str(high),
        "OMPI_MCA_btl_tcp_port_min_v4": str(low),
        "OMPI_MCA_btl_tcp_port_range_v4": str(high - low + 1),
    }


def describe(enforced: dict[str, Any] | None) -> str:
    """One line for `results` and the report: what the sandbox enforced. The record is the job's (so the
    model's to write): anything that is not what the job writes reads as unreadable, never an error."""
    try:
        return _describe(enforced)
    except (KeyError, TypeError, AttributeError, ValueError):
        return "unknown: the job's record of its sandbox is not readable"


def _describe(enforced: dict[str, Any] | None) -> str:
    if not enforced or enforced.get("level") == "off":
        return "off"
    if not enforced.get("abi"):
        return f"{enforced['level']}: nothing enforced (the kernel has no Landlock)"

    def listed(key: str, sep: str = ", ") -> str:
        return sep.join(map(str, enforced[key]))

    parts = [
        f"Landlock ABI {enforced['abi']}",
        f"files: write {len(enforced.get('write', []))} paths, read {len(enforced.get('read', []))}",
        str(enforced.get("network", "")),
        ("scoped: " + listed("scopes")) if enforced.get("scopes") else "",
        f"max file {enforced['rlimits']['file_size_mb']} MB, no core dumps",
    ]
    missing = f"; not enforced: {listed('missing', '; ')}" if enforced.get("missing") else ""
    opened = f"; writable besides the job: {listed('opened')}" if enforced.get("opened") else ""
    cache = f"; {enforced['cache_problem']}" if enforced.get("cache_problem") else ""
    return f"{enforced['level']}: " + ", ".join(p for p in parts if p) + opened + cache + missing


def apparmor_profile(jobs_root: str, python: str | None = None) -> str:
    """An AppArmor profile for the account that runs jobs (a service's, or a worker's): the outer layer of
    Bumps' old server design, around the Landlock one. Paths come from this installation."""
    python = str(Path(python or sys.executable).resolve())
    paths = {str(Path(p).resolve()) for p in python_paths() if p.startswith("/") and Path(p).is_dir()}
    code = sorted(p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths | {"/usr"}))
    code = [p for p in code if p not in ("/", "/usr")]
    lines = [
        "# AppArmor profile for bumps-mpi jobs, written by `bumps-submit sandbox apparmor-profile`.",
        "# Install it as /etc/apparmor.d/bumps-mpi-job and load it with apparmor_parser -r. It attaches to",
        f"# {python}: every process started from it, so give the account that runs",
        "# jobs an interpreter of its own (a copy, not a link) for this profile to confine it alone.",
        "abi <abi/3.0>,",
        "include <tunables/global>",
        "",
        f'profile bumps-mpi-job "{python}" flags=(attach_disconnected) {{',
        "  include <abstractions/base>",
        "  include <abstractions/nameservice>",
        "",
        "  # the Python environment and the system: read and map, never write",
        *[f'  "{path}/**" mrix,' for path in code],
        f'  "{python}" mrix,',
        "  /usr/** mrix,",
        "  /etc/** r,",
        "  /opt/** mrix,",
        "  @{PROC}/** r,",
        "  /sys/** r,",
        "  /dev/shm/** rwkl,",
        "  /dev/null rw,",
        "",
        "  # job directories: everything, inside them only",
        f'  "{jobs_root.rstrip("/")}/" r,',
        f'  "{jobs_root.rstrip("/")}/**" rwkl,',
        "",
        "  # never the account's secrets",
        "  deny @{HOME}/.ssh/** rwlkm,",
        "  deny @{HOME}/.gnupg/** rwlkm,",
        "",
        "  # MPI: shared memory on a node, TCP between nodes; signals only among the job's own processes",
        "  network unix,",
        "  network inet stream,",
        "  network inet6 stream,",
        "  signal (send, receive) peer=bumps-mpi-job,",
        "}",
    ]
    return "\n".join(lines) + "\n"
