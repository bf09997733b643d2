"""Each of the service's users has a library cache of their own (bumps_mpi.sandbox.libraries).

Their fits share compiled kernels (a sasmodels model is compiled once per user,
not once per fit); two users never share a cache, since each user's models
write theirs. The controller keeps them in its data directory, a dispatch
worker in its state directory, named by a key that says nothing of who it is.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..errors import UsageError


def cache_key(owner: str) -> str:
    """A name for *owner*'s cache: a safe file name, the same on every worker, not the user's name."""
    return hashlib.sha256(owner.encode()).hexdigest()[:24]


def user_cache(root: Path, key: str) -> Path:
    """The cache with *key* under *root* (the controller's data directory, or a worker's state)."""
    if not re.fullmatch(r"[0-9a-f]{24}", key):
        raise UsageError(f"cache key {key!r} is not one a job controller made")
    return root / "caches" / key
