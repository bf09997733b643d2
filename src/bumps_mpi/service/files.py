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
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
REGULAR = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_beneath(base: Path, relative: str) -> BinaryIO:
    """The regular file *base*/*relative*, opened without following any link; OSError otherwise."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or any(p in ("..", ".", "") for p in parts):
        raise FileNotFoundError(relative)
    fd = os.open(base, DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        found = os.open(parts[-1], REGULAR, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(found).st_mode):
        os.close(found)
        raise IsADirectoryError(relative)
    return os.fdopen(found, "rb")


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
