"""Reading a tar shard header by header, through damage, and saying where it is damaged.

Python's ``tarfile`` in stream mode takes an invalid header after the first as
the end of the archive, silently, so a shard with garbage in its middle reads
as a shorter shard. This reader checks every 512-byte header's checksum. An
invalid header starts a damaged span: the reader scans on, block by block, for
the next valid header and resumes there; the member before the span is dropped
too (its data may hold the start of the garbage). A shard that ends inside a
member, or without tar's end-of-archive marker, is truncated. Every damage is a
:class:`Damage` in the stream of members, so the loader and the sample count
read a shard the same way and see the same members. A stream without any
valid header is not a tar file: :class:`tarfile.ReadError`.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = 512


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes | None  # None when read with ``data=False``


@dataclass(frozen=True)
class Damage:
    """Bytes ``start`` to ``end`` of a shard unreadable (``end`` None: the shard ends there)."""

    start: int
    end: int | None
    reason: str
    size: int | None = None  # the file's size, when known

    def __str__(self) -> str:
        of = f" of {self.size}" if self.size is not None else ""
        if self.end is None:
            return f"ends at byte {self.start}{of}: {self.reason}"
        return f"bytes {self.start}-{self.end}{of} unreadable: {self.reason}"


def _read(stream: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _skip(stream: BinaryIO, n: int, end: int | None) -> int:
    """Skip ``n`` bytes (seeking when the stream's ``end`` is known); the bytes skipped."""
    if end is not None:
        here = stream.tell()
        stream.seek(min(here + n, end))
        return min(n, end - here)
    skipped = 0
    while skipped < n:
        chunk = stream.read(min(1 << 20, n - skipped))
        if not chunk:
            break
        skipped += len(chunk)
    return skipped


def _header(block: bytes) -> tarfile.TarInfo | None:
    """The header in ``block`` if its checksum is valid, else None."""
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header."""
    for record in data.split(b"\n"):
        _, _, field = record.partition(b" ")
        key, _, value = field.partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
    return None


def read_members(
    stream: BinaryIO, *, data: bool = True, size: int | None = None
) -> Iterator[Member | Damage]:
    """The regular files of a tar stream in order, with a :class:`Damage` where it is damaged.

    ``data=False`` skips the file contents (seeking where the stream can).
    ``size`` is the stream's length if known, for the damage messages. Zero
    blocks end the archive unless a valid header follows them (zeroed damage).
    """
    end = None
    if not data:
        try:
            here = stream.tell()
            end = stream.seek(0, 2)
            stream.seek(here)
        except (AttributeError, OSError):
            end = None
    pos = 0
    pending: Member | None = None  # yielded once the next header is found valid
    long_name: str | None = None
    while True:
        block = _read(stream, BLOCK)
        if len(block) < BLOCK:
            if pending is not None:
                yield pending
            reason = "no end-of-archive marker (truncated at a member boundary?)"
            if block:
                reason = "truncated inside a tar header"
            yield Damage(pos + len(block), None, reason, size)
            return
        info = None if block == bytes(BLOCK) else _header(block)
        if info is None:
            zeros = block == bytes(BLOCK)
            start = pos
            pos += BLOCK
            while True:  # scan for the next valid header
                block = _read(stream, BLOCK)
                if len(block) < BLOCK:
                    break
                if block != bytes(BLOCK) and (info := _header(block)) is not None:
                    break
                zeros = zeros and block == bytes(BLOCK)
                pos += BLOCK
            if info is None and zeros:
                if pending is not None:
                    yield pending
                return  # the end-of-archive marker and the padding after it
            dropped = f"; {pending.name} before it dropped" if pending is not None else ""
            pending = long_name = None
            what = "zeroed bytes" if zeros else "invalid tar header"
            if info is None and start == 0:
                read = pos + len(block)
                raise tarfile.ReadError(f"not a tar file: no valid tar header in {read} bytes")
            if info is None:
                why = f"{what}, no valid header after it{dropped}"
                yield Damage(start, pos + len(block), why, size)
                return
            yield Damage(start, pos, f"{what}{dropped}", size)
        if pending is not None:
            yield pending
            pending = None
        data_at = pos + BLOCK
        pos = data_at
        padded = -(-info.size // BLOCK) * BLOCK
        name = long_name or info.name
        meta = info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE)
        if meta or (data and info.isreg()):
            content = _read(stream, padded)
            got = len(content)
            content = content[: info.size]
        else:
            content, got = None, _skip(stream, padded, end)
        if got < info.size:
            why = f"truncated inside {name} ({info.size} bytes from byte {data_at})"
            yield Damage(pos + got, None, why, size)
            return
        pos += got
        if info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = content.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif info.type == tarfile.XHDTYPE:
            long_name = _pax_path(content) or long_name
        else:
            if info.isreg():
                pending = Member(name, content)
            long_name = None
