"""Unpack an uploaded bundle archive safely: ``robopt-bench serve``'s extractor (docs/REMOTE.md).

The archive comes from the network, so it is read by a small tar reader of its own rather than
``tarfile``: stream-mode ``tarfile`` reads a GNU long-name or PAX header whole, into memory,
before anything can look at its size (a 261 KB gzip upload once took a server to 2.1 GB), and
follows GNU sparse maps of any length. Here every header is judged from its 512-byte block
first: an extended header (GNU ``L``/``K``, PAX ``x``/``g``) larger than its cap is refused
before its data is read, names are capped, and only regular files and folders are accepted.
Decompression (gzip, bzip2, xz) is pulled in bounded pieces, and file data is written chunk by
chunk under two limits: a fixed size and a ratio to the compressed bytes actually received, so
a compression bomb stops within a chunk of the limit.

Errors are :class:`ArchiveError` (an HTTP status and one line); a member's name appears in a
message cut to :data:`SHOW_CHARS` characters, and no message names a server path.

Standard library only.
"""

from __future__ import annotations

import bz2
import lzma
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

BLOCK = 512
_CHUNK = 1 << 20
_IN_CHUNK = 64 << 10  # compressed bytes pulled at a time: the ratio limit follows closely
SHOW_CHARS = 80
_XZ_MEMLIMIT = 128 << 20


class ArchiveError(Exception):
    """The archive is refused: HTTP ``status`` (400 or 413) and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WriteError(Exception):
    """Writing into the job folder failed (a server problem, not the upload's)."""


@dataclass(frozen=True)
class Limits:
    """What an upload may unpack to (the defaults are documented in docs/REMOTE.md)."""

    max_bytes: int = 4 << 30  # file data, whatever the upload limit (--max-unpacked-mb)
    max_ratio: float = 20.0  # file data <= ratio x compressed bytes received + slack
    slack: int = 1 << 20  # (manifest.json and other small text compress far better)
    max_members: int = 100_000
    max_name: int = 1024  # bytes of a member's whole path
    max_part: int = 255  # bytes of one path component (NAME_MAX)
    max_longname: int = 4096  # GNU L/K header data
    max_pax: int = 64 << 10  # PAX x/g header data
    max_extended: int = 8  # extended headers in a row before one member


def show(name: str) -> str:
    """A member's name for a message: quoted, at most SHOW_CHARS characters."""
    return repr(name[:SHOW_CHARS]) + ("..." if len(name) > SHOW_CHARS else "")


# --- decompression -------------------------------------------------------------------------


class _Inflated:
    """The decompressed stream of ``read`` (gzip, bzip2, xz or plain), in bounded pieces."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        head = read(_IN_CHUNK)
        self._pending = head
        self._gzip = head[:2] == b"\x1f\x8b"
        self._d: Any = None
        if self._gzip:
            self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif head[:3] == b"BZh":
            self._d = bz2.BZ2Decompressor()
        elif head[:6] == b"\xfd7zXZ\x00":
            # An xz header may ask for a dictionary of up to 1.5 GiB: refuse over xz -9's.
            self._d = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=_XZ_MEMLIMIT)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (b"" at the end); never more than ``n`` in memory at once."""
        if self._d is None:
            if self._pending:
                out, self._pending = self._pending[:n], self._pending[n:]
                return out
            return self._read(n)
        while True:
            d = self._d
            if self._gzip:
                if d.eof:
                    rest = d.unused_data + self._pending
                    if rest[:2] != b"\x1f\x8b":
                        return b""  # bytes after the last gzip member: ignored
                    self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next member
                    self._pending = rest
                    continue
                out = d.decompress(self._pending, n)
                self._pending = d.unconsumed_tail
                if out or d.eof:
                    if out:
                        return out
                    continue
            else:
                if d.eof:
                    return b""
                out = d.decompress(self._pending, n)
                self._pending = b""
                if out:
                    return out
                if not d.needs_input:
                    continue
            if self._pending:
                raise zlib.error("the decompressor makes no progress")
            more = self._read(_IN_CHUNK)
            if not more:
                raise EOFError("the compressed stream ends early")
            self._pending = more


def _exact(src: _Inflated, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = src.read(min(left, _CHUNK))
        if not chunk:
            raise EOFError("unexpected end of data")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _skip(src: _Inflated, n: int) -> None:
    while n:
        chunk = src.read(min(n, _CHUNK))
        if not chunk:
            raise EOFError("unexpected end of data")
        n -= len(chunk)


# --- tar headers ---------------------------------------------------------------------------


def _bad(why: str) -> ArchiveError:
    return ArchiveError(
        400, f"the upload is not a valid tar, tar.gz, tar.bz2 or tar.xz archive ({why})."
    )


def _text(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _number(field: bytes, what: str) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256 (files over 8 GiB)
        if field[:1] == b"\xff":
            raise _bad(f"negative {what}")
        return int.from_bytes(field[1:], "big")
    text = _text(field).strip(b" \0")
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise _bad(f"bad {what} field") from None


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    return stored in (unsigned, signed)


def _pax_records(data: bytes, where: str) -> dict[str, str]:
    """The records of a PAX header ("LEN key=value\\n" each)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos:] == b"\0" * (len(data) - pos):
            break
        space = data.find(b" ", pos, pos + 20)
        try:
            length = int(data[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        record = data[pos : pos + length]
        if length <= space - pos + 1 or len(record) < length or record[-1:] != b"\n":
            raise _bad(f"malformed {where}")
        key, eq, value = record[space - pos + 1 : -1].partition(b"=")
        if not eq:
            raise _bad(f"malformed {where}")
        try:
            out[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(f"{where} is not UTF-8") from None
        pos += length
    return out


@dataclass
class _Member:
    name: str
    type: bytes
    size: int


def _kind(type_: bytes) -> str:
    return {
        b"1": "hard link",
        b"2": "symbolic link",
        b"3": "device",
        b"4": "device",
        b"6": "FIFO",
    }.get(type_, f"entry of tar type {type_.decode('latin-1')!r}")


class _TarReader:
    """Members of a tar stream, one header at a time, each extended header capped first."""

    def __init__(self, src: _Inflated, limits: Limits) -> None:
        self.src, self.limits = src, limits
        self.data_left = 0  # bytes of the current member not read yet (plus padding)
        self.pad = 0

    def _extended(self, size: int, cap: int, what: str) -> bytes:
        if size > cap:
            raise ArchiveError(
                400,
                f"the archive has a {what} header of {size} bytes; at most {cap} are accepted "
                "(member names and PAX records are short in a bundle).",
            )
        data = _exact(self.src, size)
        _skip(self.src, -size % BLOCK)
        return data

    def next(self) -> _Member | None:
        """The next member (its data is read by ``read_data``), or None at the end."""
        if self.data_left or self.pad:
            _skip(self.src, self.data_left + self.pad)
            self.data_left = self.pad = 0
        longname: bytes | None = None
        pax: dict[str, str] = {}
        for _ in range(self.limits.max_extended + 1):
            try:
                block = _exact(self.src, BLOCK)
            except EOFError:
                raise _bad("it ends before the end-of-archive marker") from None
            if block == bytes(BLOCK):
                if longname is not None or pax:
                    raise _bad("an extended header is followed by the end of the archive")
                return None
            if not _checksum_ok(block):
                raise _bad("bad header checksum")
            type_ = block[156:157]
            size = _number(block[124:136], "size")
            if type_ in (b"L", b"K"):
                data = self._extended(size, self.limits.max_longname, "GNU long-name")
                if type_ == b"L":
                    longname = _text(data)
                continue
            if type_ in (b"x", b"X"):
                pax.update(
                    _pax_records(self._extended(size, self.limits.max_pax, "PAX"), "PAX header")
                )
                continue
            if type_ == b"g":
                records = _pax_records(
                    self._extended(size, self.limits.max_pax, "PAX"), "PAX header"
                )
                if {"path", "size"} & set(records) or any(
                    k.startswith("GNU.sparse") for k in records
                ):
                    raise ArchiveError(
                        400, "the archive's global PAX header sets paths or sizes; not accepted."
                    )
                continue
            return self._member(block, type_, size, longname, pax)
        raise ArchiveError(
            400, f"the archive has more than {self.limits.max_extended} extended headers in a row."
        )

    def _member(
        self, block: bytes, type_: bytes, size: int, longname: bytes | None, pax: dict[str, str]
    ) -> _Member:
        if any(k.startswith("GNU.sparse") for k in pax):
            raise ArchiveError(
                400, "the archive holds a sparse file; only regular files are accepted."
            )
        if "path" in pax:
            raw = pax["path"].encode("utf-8")
        elif longname is not None:
            raw = longname
        else:
            raw = _text(block[0:100])
            prefix = _text(block[345:500]) if block[257:263] == b"ustar\x00" else b""
            if prefix:
                raw = prefix + b"/" + raw
        if len(raw) > self.limits.max_name:
            name = raw[: 4 * SHOW_CHARS].decode("utf-8", "replace")
            raise ArchiveError(
                400,
                f"archive member {show(name)} has a name longer than {self.limits.max_name} bytes.",
            )
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            name = raw.decode("utf-8", "replace")
            raise ArchiveError(
                400, f"archive member {show(name)} has a name that is not UTF-8."
            ) from None
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise _bad("bad PAX size") from None
        if type_ == b"\0" and name.endswith("/"):
            type_ = b"5"  # an old-style folder
        if type_ in (b"0", b"\0", b"7"):
            if size < 0:
                raise _bad("negative size")
            self.data_left, self.pad = size, -size % BLOCK
            return _Member(name, b"0", size)
        if type_ == b"5":
            return _Member(name, b"5", 0)
        raise ArchiveError(
            400,
            f"archive member {show(name)} is a {_kind(type_)}; only regular files and folders "
            "are accepted.",
        )

    def read_data(self, n: int) -> bytes:
        """Up to ``n`` bytes of the current member's data."""
        if not self.data_left:
            return b""
        chunk = self.src.read(min(n, self.data_left))
        if not chunk:
            raise EOFError("unexpected end of data")
        self.data_left -= len(chunk)
        return chunk


# --- extraction ----------------------------------------------------------------------------


def member_parts(name: str, limits: Limits = Limits()) -> tuple[str, ...]:
    """The member's path parts; 400 for absolute names, ``..``, control characters."""
    if not name or any(ord(c) < 32 or ord(c) == 127 for c in name) or "\\" in name:
        raise ArchiveError(400, f"archive member {show(name)} has an unusable name.")
    p = PurePosixPath(name)
    if p.is_absolute():
        raise ArchiveError(400, f"archive member {show(name)} has an absolute path.")
    parts = tuple(x for x in p.parts if x != ".")
    if ".." in parts:
        raise ArchiveError(400, f"archive member {show(name)} points outside the archive ('..').")
    if any(len(x.encode()) > limits.max_part for x in parts):
        raise ArchiveError(
            400, f"archive member {show(name)} has a name part longer than {limits.max_part} bytes."
        )
    return parts


class _Budget:
    """The unpacked bytes so far against the fixed limit and the ratio to bytes received."""

    def __init__(self, limits: Limits, received: Callable[[], int]) -> None:
        self.limits, self.received, self.total = limits, received, 0

    def take(self, n: int) -> None:
        total = self.total + n
        lim = self.limits
        if total > lim.max_bytes:
            raise ArchiveError(
                413,
                f"the archive unpacks to more than {lim.max_bytes / 2**20:.0f} MiB "
                f"(--max-unpacked-mb): refused after writing {self.total / 2**20:.1f} MiB.",
            )
        got = self.received()
        if total > lim.max_ratio * got + lim.slack:
            raise ArchiveError(
                413,
                f"the archive unpacks to more than {lim.max_ratio:g} times the "
                f"{got / 2**10:.0f} KiB received (+ {lim.slack >> 20} MiB; a compression "
                f"bomb?): refused after writing {self.total / 2**20:.1f} MiB.",
            )
        self.total = total


def _mkdir(target: Path) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
    except (FileExistsError, NotADirectoryError):
        raise
    except OSError as exc:
        raise WriteError(str(exc)) from exc


def _write_member(tar: _TarReader, target: Path, size: int, budget: _Budget) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    _mkdir(target.parent)
    try:
        fd = os.open(target, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    except (FileExistsError, IsADirectoryError, NotADirectoryError):
        raise
    except OSError as exc:
        raise WriteError(str(exc)) from exc
    with os.fdopen(fd, "wb") as out:
        left = size
        while left > 0:
            chunk = tar.read_data(min(_CHUNK, left))
            budget.take(len(chunk))
            left -= len(chunk)
            try:
                out.write(chunk)
            except OSError as exc:
                raise WriteError(str(exc)) from exc


def extract_archive(
    stream: IO[bytes],
    dest: Path,
    limits: Limits = Limits(),
    received: Callable[[], int] | None = None,
) -> tuple[int, int]:
    """Unpack a tar stream (plain, gz, bz2 or xz) into the new folder ``dest``, safely.

    Accepts regular files and folders with relative names, each name once; refuses absolute
    paths, ``..``, links, devices, FIFOs, sparse files and oversized headers or names (400
    naming the member, cut short) and archives beyond ``limits`` (413). Files are created
    with ``O_EXCL`` and ``O_NOFOLLOW``, mode 600, so nothing is written through an existing
    name.

    Args:
        stream: the (compressed) archive; ``read(n)`` returns at most ``n`` bytes.
        dest: a folder that does not exist yet.
        limits: caps on sizes, names and headers.
        received: compressed bytes read so far (for the ratio limit); default: counted here.

    Returns:
        (members, bytes unpacked).

    Raises:
        ArchiveError: 400 or 413 as above, 400 for a corrupt or truncated stream.
        WriteError: the folder cannot be written.
    """
    count = [0]

    def read(n: int) -> bytes:
        data = stream.read(n)
        count[0] += len(data)
        return data

    budget = _Budget(limits, received or (lambda: count[0]))
    dest.mkdir(mode=0o700)
    real = os.path.realpath(dest)
    seen: set[tuple[str, ...]] = set()
    members = 0
    try:
        tar = _TarReader(_Inflated(read), limits)
        while (m := tar.next()) is not None:
            members += 1
            if members > limits.max_members:
                raise ArchiveError(413, f"the archive has more than {limits.max_members} entries.")
            parts = member_parts(m.name, limits)
            if not parts:  # "." itself
                continue
            if parts in seen:
                raise ArchiveError(400, f"archive member {show(m.name)} appears more than once.")
            seen.add(parts)
            target = dest.joinpath(*parts)
            parent = os.path.realpath(target.parent)
            if parent != real and not parent.startswith(real + os.sep):  # cannot happen
                raise ArchiveError(
                    400, f"archive member {show(m.name)} points outside the archive."
                )
            try:
                if m.type == b"5":
                    _mkdir(target)
                    continue
                if budget.total + m.size > limits.max_bytes:
                    budget.take(m.size)  # raises: refused before writing a byte of it
                _write_member(tar, target, m.size, budget)
            except (FileExistsError, IsADirectoryError, NotADirectoryError):
                raise ArchiveError(
                    400, f"archive member {show(m.name)} clashes with another member's path."
                ) from None
    except (ArchiveError, WriteError):
        raise
    except (EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as exc:
        raise _bad(_first_line(exc)) from None
    return members, budget.total


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:100]
