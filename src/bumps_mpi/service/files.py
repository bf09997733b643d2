"""Reading a job directory whose files a model wrote: never through a link, never outside it, never stalled.

The sandbox lets a model write anywhere in its job directory, so any name there may
be a symbolic link (to the service's secret, to another fit) or a pipe, and may
change between a check and a read. Files are therefore opened once, component by
component with O_NOFOLLOW from the job directory down (a link anywhere on the way
fails), checked to be a regular file on the open descriptor, and read from that
descriptor; listings do not descend into links.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..jobdir import open_beneath

__all__ = ["RESULTS_LIMIT", "chunks", "open_beneath", "regular_files"]

RESULTS_LIMIT = (
    8 << 30
)  # what one dispatched fit may keep as results: its worker sends no more, the controller
# accepts no more


def regular_files(base: Path, within: str = "") -> Iterator[str]:
    """Relative names of the regular files under *base*/*within*, not descending into links."""
    try:
        entries = list(os.scandir(base / within if within else base))
    except OSError:
        return
    for entry in sorted(entries, key=lambda e: e.name):
        name = f"{within}/{entry.name}" if within else entry.name
        if entry.is_symlink():
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from regular_files(base, name)
        elif entry.is_file(follow_symlinks=False):
            yield name


def chunks(handle: BinaryIO, size: int = 1 << 16) -> Iterator[bytes]:
    with handle:
        while block := handle.read(size):
            yield block
