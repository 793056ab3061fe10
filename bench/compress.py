"""Engine files stored compressed in a bundle, and unpacked once into a cache on the robot.

Pruned weights are mostly zeros, which a general-purpose compressor shrinks well, but no runtime
loads a compressed model. So the compiler replaces each engine file by ``<name>.xz`` (or
``.gz``) and describes that in ``manifest["engine"]["compressed"]``; on the robot,
:func:`materialize_engine` decompresses into a cache folder named by the sha256 of the
compressed files and hands the runner that folder. The sha256 checks of ``manifest["files"]``
keep applying to the files as stored. This module uses only the standard library (plus the
project's stdlib-only error classes): the robot has numpy, click and one runtime.

Default method, measured on the robopt dev box (Intel Xeon, 2 shared vCPUs, Python 3.11 stdlib)
on an ONNX file of five float32 MatMul weights (13.63 MB, 3.4M values, 80% of them zero,
the rest N(0, 0.05)); decompression is the best of 3:

    method       stored MB (ratio)  compress s  decompress s
    gzip -6       3.49 (0.256)         0.44        0.050
    gzip -9       3.43 (0.252)         4.06        0.041
    lzma -1       3.21 (0.235)         0.92        0.256
    lzma -6       3.07 (0.225)        10.42        0.237
    (50% zeros: gzip -6 0.554, lzma -6 0.518; dense weights: gzip 0.926, lzma 0.922)

lzma stores 8% less than gzip at preset 1 (12% at preset 6, for 11x the compile time), and its
~5x slower decompression (about 60 MB/s here) is paid once per bundle: later starts reuse the
cache. Bundle size is what this feature is for, so the default is lzma at preset 1.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import lzma
import shutil
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO, Any

from robopt_compile.errors import InputError
from robopt_compile.jsonutil import sha256_file
from robopt_compile.paths import cache_dir

DEFAULT_METHOD = "lzma"
LZMA_PRESET = 1  # measured above: preset 6 saves 4% more and takes 11x as long
GZIP_LEVEL = 6
SUFFIXES = {"lzma": ".xz", "gzip": ".gz"}
_CHUNK = 1 << 20


def _writer(method: str, raw: IO[bytes]) -> IO[bytes]:
    if method == "lzma":
        return lzma.LZMAFile(raw, "wb", format=lzma.FORMAT_XZ, preset=LZMA_PRESET)
    # mtime=0 and no file name in the header: the same engine gives the same bytes
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0)


def _reader(method: str, raw: IO[bytes]) -> IO[bytes]:
    if method == "lzma":
        return lzma.LZMAFile(raw, "rb")
    return gzip.GzipFile(fileobj=raw, mode="rb")


def _copy(src: IO[bytes], dst: IO[bytes], on_chunk: Callable[[bytes], None]) -> int:
    n = 0
    while chunk := src.read(_CHUNK):
        on_chunk(chunk)
        dst.write(chunk)
        n += len(chunk)
    return n


def compress_engine(engine_dir: Path, method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """Replace every file under ``engine_dir`` by its compressed form (``<name>.xz``/``.gz``).

    Returns the JSON description for ``manifest["engine"]["compressed"]``:
    ``{"method", "files": {compressed: {"original", "bytes", "original_bytes", "sha256"}}}``,
    paths relative to ``engine_dir`` (POSIX), ``sha256`` that of the original file. The
    manifest's ``engine.files`` must then list the compressed names (the files on disk).
    """
    if method not in SUFFIXES:
        raise InputError(f"unknown engine compression {method!r}; use one of {sorted(SUFFIXES)}.")
    engine_dir = Path(engine_dir)
    originals = sorted(p for p in engine_dir.rglob("*") if p.is_file())
    if not originals:
        raise InputError(f"{engine_dir} holds no engine files to compress.")
    files: dict[str, dict[str, Any]] = {}
    for src in originals:
        dst = src.with_name(src.name + SUFFIXES[method])
        if dst.exists():
            raise InputError(f"{dst} exists; {engine_dir} looks compressed already.")
        digest = hashlib.sha256()
        with open(src, "rb") as fin, open(dst, "wb") as raw, _writer(method, raw) as fout:
            size = _copy(fin, fout, digest.update)
        src.unlink()
        files[dst.relative_to(engine_dir).as_posix()] = {
            "original": src.relative_to(engine_dir).as_posix(),
            "bytes": dst.stat().st_size,
            "original_bytes": size,
            "sha256": digest.hexdigest(),
        }
    return {"method": method, "files": files}


def _relative(rel: Any, what: str) -> PurePosixPath:
    p = PurePosixPath(str(rel))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise InputError(f"manifest.json: engine.compressed {what} {rel!r} must be relative.")
    return p


def description(engine: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    """``engine.compressed`` checked: (method, {stored name: {"original", ...}}), every name
    relative; one InputError line otherwise."""
    desc = engine["compressed"]
    method = desc.get("method") if isinstance(desc, dict) else None
    files = desc.get("files") if isinstance(desc, dict) else None
    if method not in SUFFIXES or not isinstance(files, dict) or not files:
        raise InputError(
            "manifest.json: engine.compressed must be {method: lzma|gzip, files: {...}}; the "
            "bundle is corrupt or from a newer robopt."
        )
    for name, entry in files.items():
        _relative(name, "file")
        if not isinstance(entry, dict) or "original" not in entry:
            raise InputError(f"manifest.json: engine.compressed entry {name!r} has no original.")
        _relative(entry["original"], "original")
    return method, files


def _key(edir: Path, method: str, files: dict[str, dict[str, Any]]) -> str:
    """sha256 over the compressed files' contents (and what they unpack to)."""
    parts = {n: [sha256_file(edir / n), files[n]["original"]] for n in sorted(files)}
    return hashlib.sha256(json.dumps([method, parts]).encode()).hexdigest()


def _complete(folder: Path, files: dict[str, dict[str, Any]]) -> bool:
    for entry in files.values():
        p = folder / entry["original"]
        size = entry.get("original_bytes")
        if not p.is_file() or (size is not None and p.stat().st_size != size):
            return False
    return True


def _unpack(
    edir: Path, rel_dir: str, dest: Path, method: str, files: dict[str, dict[str, Any]]
) -> None:
    for name, entry in sorted(files.items()):
        shown = (PurePosixPath(rel_dir) / name).as_posix()
        out = dest / entry["original"]
        out.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(edir / name, "rb") as raw, _reader(method, raw) as fin, open(out, "wb") as f:
            try:
                _copy(fin, f, digest.update)
            except (lzma.LZMAError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
                raise InputError(
                    f"bundle file {shown!r} cannot be decompressed ({type(exc).__name__}: "
                    f"{str(exc)[:120]}): it was truncated or edited. Copy the bundle again."
                ) from exc
        expected = entry.get("sha256")
        if expected is not None and digest.hexdigest() != str(expected).lower():
            raise InputError(
                f"bundle file {shown!r} decompresses to data that does not match its sha256 in "
                "manifest.json: it was truncated or edited. Copy the bundle again."
            )


def materialize_engine(bundle_dir: Path, manifest: dict[str, Any]) -> Path:
    """The folder to load the engine from.

    The bundle's engine folder itself when the engine is stored plain; otherwise a decompressed
    copy in ``cache_dir("engines")/<sha256 of the compressed files>``, written to a temporary folder
    and renamed into place (so a crash never leaves a half-written engine) and reused by later
    calls while its files have their recorded sizes.

    Raises:
        InputError: a compressed file is corrupt, the description is malformed, or the cache
            cannot be written (the message says to set ROBOPT_CACHE).
    """
    engine = manifest["engine"]
    edir = Path(bundle_dir) / engine["dir"]
    if not engine.get("compressed"):
        return edir
    method, files = description(engine)
    missing = [n for n in sorted(files) if not (edir / n).is_file()]
    if missing:
        raise InputError(
            f"engine file(s) {missing} missing from {edir}; copy the whole bundle folder again."
        )
    root = cache_dir("engines")
    final = root / _key(edir, method, files)
    if _complete(final, files):
        return final
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name[:16]}.tmp-", dir=root))
        _unpack(edir, str(engine["dir"]), tmp, method, files)
        if final.exists() and not _complete(final, files):
            shutil.rmtree(final)  # an incomplete or edited cache entry
        try:
            tmp.rename(final)
            tmp = None
        except OSError:
            if not _complete(final, files):  # else another process won the race: use its copy
                raise
    except OSError as exc:
        raise InputError(
            f"cannot unpack the compressed engine into {root} ({exc.strerror or exc}); set "
            "ROBOPT_CACHE to a writable folder."
        ) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    return final
