"""Uploaded models and data: size and count limits, names that cannot lead anywhere else, safe zips.

A name is kept only if it is a plain relative path of ordinary parts: no absolute
path, no `..`, no empty or dot-only part, no control character, no backslash.
A zip's entries are checked the same way, and must be files or directories (no
links, devices or pipes); the archive is refused before anything is written if
its entries or its total unpacked size exceed the limits, or if any entry
claims to unpack more than 200 times its compressed size (a zip bomb).
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..errors import UsageError

MAX_RATIO = 200  # unpacked / compressed, per entry: text data compresses about 5-20x, bombs 1000x+
CHUNK = 1 << 16


class Refused(UsageError):
    """An upload that breaks a rule; the message says which and what to do."""


def safe_name(name: str) -> PurePosixPath:
    """*name* as a relative path of ordinary parts, or Refused."""
    if not name or any(ord(c) < 32 or c == "\\" for c in name):
        raise Refused(f"file name {name!r} is not allowed (empty, a control character or a backslash)")
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise Refused(f"file name {name!r} is not allowed: use plain relative names (no '..', no '/' first)")
    if len(path.parts) > 8 or any(len(part) > 200 for part in path.parts):
        raise Refused(f"file name {name!r} is too long or too deep")
    return path


class Budget:
    """What one upload may still take: bytes and files."""

    def __init__(self, max_bytes: int, max_files: int, max_unzipped: int):
        self.bytes, self.files, self.unzipped = max_bytes, max_files, max_unzipped

    def take_file(self) -> None:
        self.files -= 1
        if self.files < 0:
            raise Refused("too many files in this upload")

    def take_bytes(self, count: int, limit_mb: int) -> None:
        self.bytes -= count
        if self.bytes < 0:
            raise Refused(f"the upload is larger than the {limit_mb} MB this service accepts")


def save(stream: BinaryIO, destination: Path, name: str, budget: Budget, limit_mb: int) -> Path:
    """Copy one uploaded file to *destination*/*name* within the budget; never outside *destination*."""
    relative = safe_name(name)
    budget.take_file()
    target = destination / relative
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = open(target, "xb")  # noqa: SIM115 - closed below
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise Refused(f"file name {name!r} is given twice (or as a file and a folder)") from None
    with out:
        while chunk := stream.read(CHUNK):
            budget.take_bytes(len(chunk), limit_mb)
            out.write(chunk)
    return target


def unzip(archive: Path, destination: Path, budget: Budget, limit_unzipped_mb: int) -> list[Path]:
    """Unpack a checked zip into *destination*; every rule is checked on every entry before any is written."""
    entries = _entry_count(archive)
    if entries is not None and entries > budget.files:
        raise Refused(f"the zip has {entries} entries: more than this service accepts ({budget.files} files)")
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            total = 0
            for entry in members:
                kind = stat.S_IFMT(entry.external_attr >> 16)  # 0: no Unix type recorded (a plain file)
                if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                    raise Refused(f"zip entry {entry.filename!r} is a link or a special file: not allowed")
                safe_name(entry.filename.rstrip("/"))
                if entry.is_dir():
                    continue
                budget.take_file()
                total += entry.file_size
                if entry.file_size > MAX_RATIO * max(entry.compress_size, 1) and entry.file_size > CHUNK:
                    raise Refused(
                        f"zip entry {entry.filename!r} unpacks {entry.file_size} bytes: a zip bomb?"
                    )
            if total > budget.unzipped:
                raise Refused(f"the zip unpacks to more than the {limit_unzipped_mb} MB this service accepts")
            written = []
            for entry in members:
                target = destination / safe_name(entry.filename.rstrip("/"))
                if entry.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(entry) as source, open(target, "xb") as out:
                    left = entry.file_size
                    while chunk := source.read(CHUNK):
                        left -= len(chunk)
                        if left < 0:  # the header lied about the size
                            raise Refused(f"zip entry {entry.filename!r} is larger than it says")
                        out.write(chunk)
                written.append(target)
            return written
    except zipfile.BadZipFile as exc:
        raise Refused(f"not a zip file: {exc}") from None
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        raise Refused(
            f"zip entry {Path(str(exc.filename)).name!r} is given twice (or as a file and a folder)"
        ) from None


def _entry_count(archive: Path) -> int | None:
    """The entry count a zip's end record declares, read before the whole directory is parsed (a zip of
    a million empty entries costs seconds and memory to open); None if there is no end record to read."""
    with open(archive, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 65_557))
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        return None
    count = int.from_bytes(tail[at + 10 : at + 12], "little")
    return 1 << 32 if count == 0xFFFF else count  # zip64's count: more than any limit here
