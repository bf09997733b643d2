"""Where the model's libraries keep their files once confined: nothing under $HOME or a shared /tmp.

Confined, a process may write only its own directory (the job's, or the
child's), its private TMPDIR there, and the user's library cache (the site
setting `sandbox_cache`, default ~/.cache/bumps-mpi). What is worth keeping
between fits goes to that cache, so a kernel is compiled once per user and
model, not once per fit and rank: sasmodels' compiled models (SAS_DLL_PATH),
the OpenCL and CUDA kernel caches (pyopencl and pycuda through
XDG_CACHE_HOME, the CUDA driver's CUDA_CACHE_PATH). Throwaway files go to the
private directory: matplotlib's configuration, numba's cache (seeded from the
environment's own), the compiler's temporary files.

Fits of the same user start at once (the ranks of one fit, a campaign's
fits), and sasmodels compiles into its cache with `cc ... -o cache/model.so`
after checking the file is missing: a rank could load a half-written library.
The compiler is therefore run through `bumps_mpi.sandbox.atomic_cc`, which
writes beside the target and renames it into place.

The cache is the user's own and written by their models: a model can affect
the same user's later fits through it (confined, as it is), never another
user's (the service gives each of its users a cache of their own), and nothing
unconfined ever loads from it.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

WRAPPER = "bumps_mpi.sandbox.atomic_cc"


def environment(private: Path, cache: Path | None) -> dict[str, str]:
    """The variables that send the libraries' files to *private* (this process's own) and *cache*."""
    shared = cache if cache is not None else private / "cache"
    env = {
        "TMPDIR": str(private),
        "TMP": str(private),
        "TEMP": str(private),
        "MPLCONFIGDIR": str(private / "matplotlib"),
        "NUMBA_CACHE_DIR": str(private / "numba"),
        "XDG_CACHE_HOME": str(shared / "xdg"),
        "SAS_DLL_PATH": str(shared / "sasmodels" / "compiled_models"),
        "CUDA_CACHE_PATH": str(shared / "nv" / "ComputeCache"),
        "POCL_CACHE_DIR": str(shared / "pocl"),
    }
    compiler = os.environ.get("CC", "cc")
    if WRAPPER not in compiler:
        env["BUMPS_MPI_CC"] = compiler
        env["CC"] = shlex.join([sys.executable, "-P", "-m", WRAPPER])
    return env


def make_cache(cache: Path) -> None:
    """The cache directory itself (owner only), made before confinement: only it, never a path inside it
    (those were written by models, and may be links)."""
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
