"""``/api/v1/calibrations``: upload, list and delete int8 calibration data.

A calibration upload is one ``.npz`` whose arrays are named after the model's inputs and hold
N samples on their leading axis (the single-file form ``--calibration FILE.npz`` reads). It is
streamed to ``<store>/uploads/tmp`` with its size counted (413 past the limit), checked (a
readable zip under the limit once unpacked, arrays loaded with ``allow_pickle=False``, numeric,
the same sample count >= 2 in each, no NaN or inf) and only then kept as
``<store>/uploads/calibration/<id>.npz`` beside a ``<id>.json`` record. A job names it with
``"calibration": "upload:<id>"``; the compile then checks it against the model's inputs as
the CLI does. Nothing a client sends becomes a path: the id is 32 hex digits made here.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from robopt_compile.errors import RoboptError
from robopt_compile.feeds import load_npz_inputs
from robopt_compile.service.auth import OPERATOR, VIEWER, ApiError
from robopt_compile.service.tokens import Token
from robopt_compile.store.records import utc_now

router = APIRouter(tags=["calibrations"])
_ID = re.compile(r"^[0-9a-f]{32}$")
_LABEL = re.compile(r"[^A-Za-z0-9._-]+")
PREFIX = "upload:"
CHUNK = 1 << 20


def folder(store: Any) -> Path:
    return Path(store.root) / "uploads" / "calibration"


def resolve(store: Any, spec: str) -> str:
    """``upload:<id>`` -> the stored file's path (422 for a malformed or unknown id)."""
    cid = spec[len(PREFIX) :]
    path = folder(store) / f"{cid}.npz"
    if not _ID.match(cid) or not path.is_file():
        raise ApiError(422, f"unknown calibration upload {cid!r}; upload one with POST "
                       "/api/v1/calibrations and give its id.")  # fmt: skip
    return str(path)


def check_inputs(path: str, inputs: list[Any]) -> None:
    """422 unless the upload's arrays name exactly the model's inputs (when those are known)."""
    names = {i["name"] for i in inputs if isinstance(i, dict) and "name" in i}
    if not names:
        return
    rec = json.loads(Path(path).with_suffix(".json").read_text())
    if set(rec["arrays"]) != names:
        got = sorted(rec["arrays"])
        raise ApiError(422, f"calibration upload {rec['name']!r} has arrays {got}; the "
                       f"model's inputs are {sorted(names)}.")  # fmt: skip


def check_npz(path: Path, limit: int) -> dict[str, Any]:
    """Samples and per-array shapes of a calibration ``.npz``; ApiError (413/422) if unfit."""
    try:
        with zipfile.ZipFile(path) as zf:
            unpacked = sum(m.file_size for m in zf.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ApiError(422, "the calibration upload is not a readable .npz "
                       f"(save it with numpy.savez): {exc}.") from exc  # fmt: skip
    if unpacked > limit:
        raise ApiError(413, "the .npz unpacks to more than the server's upload limit.")
    try:  # the project's reader: no pickle, one line for anything wrong
        arrays = load_npz_inputs(path, "calibration upload")
    except RoboptError as exc:
        raise ApiError(422, str(exc).replace(str(path), "the .npz")) from exc
    for key, a in arrays.items():
        if a.dtype.kind not in "biuf" or a.ndim == 0:
            raise ApiError(422, f"array {key!r} ({a.dtype}, shape {list(a.shape)}) is not a "
                           "numeric array with a leading sample axis.")  # fmt: skip
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ApiError(422, f"array {key!r} holds NaN or inf.")
    counts = {k: int(a.shape[0]) for k, a in arrays.items()}
    if len(set(counts.values())) > 1 or min(counts.values()) < 2:
        raise ApiError(422, f"every array needs the same number (>= 2) of samples on its "
                       f"leading axis; got {counts}.")  # fmt: skip
    return {"samples": next(iter(counts.values())),
            "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)}
                       for k, a in arrays.items()}}  # fmt: skip


def _records(store: Any) -> list[dict[str, Any]]:
    out = []
    for meta in folder(store).glob("*.json"):
        try:
            out.append(json.loads(meta.read_text()))
        except (OSError, ValueError):
            continue  # a record being written or damaged: not listed
    return sorted(out, key=lambda r: r["created"], reverse=True)


@router.post("/calibrations", status_code=201)
async def upload_calibration(request: Request, data: UploadFile, name: str | None = Form(None),
                             token: Token = OPERATOR) -> dict[str, Any]:  # fmt: skip
    """Upload one ``.npz`` of calibration samples (multipart field ``data``)."""
    store, cfg = request.app.state.store, request.app.state.config
    filename = data.filename or "calibration.npz"
    if Path(filename.lower()).suffix != ".npz":
        raise ApiError(422, "upload calibration data as one .npz (numpy.savez), one array per "
                       "model input with the samples on the leading axis.")  # fmt: skip
    limit = int(cfg.max_upload_mb * 2**20)
    work = Path(store.root) / "uploads" / "tmp" / uuid.uuid4().hex
    work.mkdir(parents=True)
    try:
        tmp, size = work / "data.npz", 0
        with open(tmp, "wb") as f:
            while chunk := await data.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    mb = cfg.max_upload_mb
                    raise ApiError(413, f"the upload is over the server's limit of {mb:g} MB "
                                   "(serve --max-upload-mb).")  # fmt: skip
                f.write(chunk)
        info = await run_in_threadpool(check_npz, tmp, limit)
        cid = uuid.uuid4().hex
        label = _LABEL.sub("-", name or Path(filename).stem).strip("-")[:64] or "calibration"
        rec = {"id": cid, "name": label, "size_bytes": size, "created": utc_now(),
               "uploaded_by": token.name, **info}  # fmt: skip
        dest = folder(store)
        dest.mkdir(parents=True, exist_ok=True)
        tmp.rename(dest / f"{cid}.npz")  # the data first: a record always has its file
        (work / "rec.json").write_text(json.dumps(rec))
        (work / "rec.json").rename(dest / f"{cid}.json")
        return rec
    finally:
        shutil.rmtree(work, ignore_errors=True)


@router.get("/calibrations")
def list_calibrations(request: Request, token: Token = VIEWER) -> list[dict[str, Any]]:
    """Every calibration upload, newest first."""
    return _records(request.app.state.store)


@router.delete("/calibrations/{cid}")
def delete_calibration(cid: str, request: Request, token: Token = OPERATOR) -> dict[str, Any]:
    """Delete an upload no queued or running job uses."""
    store = request.app.state.store
    path = Path(resolve(store, PREFIX + cid))
    busy = store.query("SELECT id FROM jobs WHERE state IN ('queued', 'running') AND request "
                       "LIKE ?", (f"%{cid}.npz%",))  # fmt: skip
    if busy:
        raise ApiError(409, f"job {busy[0]['id'][:12]} still uses this calibration data; "
                       "wait for it or cancel it.")  # fmt: skip
    path.with_suffix(".json").unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    return {"deleted": cid, "time": utc_now()}
