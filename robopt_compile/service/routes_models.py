"""``/api/v1/models``: upload, register a zoo model, list, show, tag, lineage, delete.

An upload (an ``.onnx``, a ``.zip`` of one ``.onnx`` with its external data, unpacked with
checks against links, ``..`` names and zip bombs, or, on a server started with
``--trust-pt2-uploads``, a ``.pt2`` checked in a child process by
:mod:`~robopt_compile.service.pt2check`) is streamed to ``<store>/uploads/tmp`` with
its size counted (413 past the limit), checked with the checks every compile runs first
(``robopt_compile.api.inspect``: the ONNX checker and strict shape inference), and only then
stored: its bytes as a content-addressed object (a tree for a zip), its folder at
``<store>/uploads/<id>/`` (the path jobs compile from), and a ``models`` row. A file that
fails any check leaves nothing behind. The client's file name is only a label: no path from a
request reaches the file system.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from robopt_compile.errors import RoboptError
from robopt_compile.service import pt2check
from robopt_compile.service.auth import OPERATOR, VIEWER, ApiError, status_of
from robopt_compile.service.tokens import Token
from robopt_compile.store.records import utc_now

router = APIRouter(tags=["models"])
_LABEL = re.compile(r"[^A-Za-z0-9._-]+")
_TAG = re.compile(r"^[A-Za-z0-9._:-]{1,40}$")
CHUNK = 1 << 20


class ZooModel(BaseModel):
    name: str = Field(description="a zoo model name, e.g. state-mlp (see robopt-compile zoo)")
    tags: list[str] = []


class Tags(BaseModel):
    tags: list[str]


def _tags(store: Any, model_id: str) -> list[str]:
    rows = store.query("SELECT tag FROM model_tags WHERE model_id=? ORDER BY tag", (model_id,))
    return [r["tag"] for r in rows]


def _set_tags(store: Any, model_id: str, tags: list[str]) -> None:
    bad = [t for t in tags if not _TAG.match(t)]
    if bad:
        raise ApiError(422, f"tag(s) {bad} are not 1-40 letters, digits or . _ : -")

    def run(c: Any) -> None:
        c.execute("DELETE FROM model_tags WHERE model_id=?", (model_id,))
        for t in sorted(set(tags)):
            c.execute("INSERT INTO model_tags(model_id, tag) VALUES (?, ?)", (model_id, t))

    store.write(run)


def model_json(store: Any, rec: Any) -> dict[str, Any]:
    """``ModelMetadata``: the row, its tags, size and parameters where known."""
    d = rec.to_dict()
    d["tags"] = _tags(store, rec.id)
    d["version"] = len(store.lineage(rec.id))  # its depth in the lineage: 1 = an original
    d["framework"] = {"onnx": "onnx", "pt2": "pytorch", "zoo": "pytorch", "keras": "tensorflow",
                      "savedmodel": "tensorflow", "tflite": "tensorflow"}.get(
        rec.source_kind or "", rec.source_kind)  # fmt: skip
    d["size_bytes"] = None
    if rec.artifact:
        rows = store.query("SELECT size FROM artifacts WHERE sha256=?", (rec.artifact,))
        d["size_bytes"] = rows[0]["size"] if rows else None
    return d


@router.post("/models", status_code=201)
async def upload_model(
    request: Request,
    model: UploadFile,
    name: str | None = Form(None),
    tags: str = Form(""),
    token: Token = OPERATOR,
) -> dict[str, Any]:
    """Upload an ``.onnx`` file, or a ``.zip`` of one ``.onnx`` with its external data
    (multipart field ``model``); checked before anything is kept."""
    import robopt_compile.api as robopt

    store, cfg = request.app.state.store, request.app.state.config
    filename = model.filename or "model"
    label = _LABEL.sub("-", name or Path(filename).stem).strip("-")[:64]
    kind = Path(filename.lower()).suffix
    if kind == ".pt2" and not cfg.trust_pt2:
        raise ApiError(422, "this server does not load .pt2 uploads (torch.export.load unpickles: "
                       "it can run code); export to ONNX and upload that, or ask the admin to "
                       "serve with --trust-pt2-uploads.")  # fmt: skip
    if kind not in (".onnx", ".zip", ".pt2"):
        raise ApiError(422, "upload an .onnx file, a .zip of one .onnx with its external data, "
                       "or a .pt2 (torch.export) program.")  # fmt: skip
    tag_list = [t.strip() for t in tags.split(",") if t.strip()]
    limit = int(cfg.max_upload_mb * 2**20)
    work = Path(store.root) / "uploads" / "tmp" / uuid.uuid4().hex
    work.mkdir(parents=True)
    try:
        dest = work / {".onnx": "model.onnx", ".zip": "upload.zip", ".pt2": "model.pt2"}[kind]
        size = 0
        with open(dest, "wb") as f:
            while chunk := await model.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        413,
                        f"the upload is over the server's limit of {cfg.max_upload_mb:g} MB "
                        "(serve --max-upload-mb).",
                    )
                f.write(chunk)
        if kind == ".zip":
            dest = await run_in_threadpool(unzip_model, dest, work / "model", limit)
        try:
            if kind == ".pt2":  # loaded, exported and checked in a child process
                exported = work / "check" / "model.onnx"
                exported.parent.mkdir()
                await run_in_threadpool(pt2check.check, dest, exported)
                info = await run_in_threadpool(robopt.inspect, exported)
                shutil.rmtree(exported.parent)
            else:
                info = await run_in_threadpool(robopt.inspect, dest)
        except RoboptError as exc:
            msg = (str(exc).splitlines() or ["invalid"])[0].replace(dest.name, filename)
            raise ApiError(status_of(exc), msg) from exc
        return await run_in_threadpool(_keep, store, dest, label or "model", info, tag_list, token)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unzip_model(archive: Path, into: Path, limit: int) -> Path:
    """Extract a .zip of one ONNX model and its external data; the .onnx file's path.

    Refused (422): not a zip, absolute or ``..`` member names, links, more than 1000 members,
    more than ``limit`` bytes unpacked (a zip bomb), not exactly one ``.onnx`` file.
    """
    import stat
    import zipfile

    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ApiError(422, f"the upload is not a readable .zip ({exc}).") from exc
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > 1000:
            raise ApiError(422, "the .zip has more than 1000 files.")
        if sum(m.file_size for m in members) > limit:
            raise ApiError(413, "the .zip unpacks to more than the server's upload limit.")
        for m in members:
            parts = Path(m.filename).parts
            if m.filename.startswith(("/", "\\")) or ".." in parts or ":" in m.filename:
                raise ApiError(422, f"the .zip member {m.filename!r} is not a plain relative path.")
            if stat.S_ISLNK(m.external_attr >> 16):
                raise ApiError(422, f"the .zip member {m.filename!r} is a link.")
        onnx = [m for m in members if m.filename.lower().endswith(".onnx")]
        if len(onnx) != 1:
            raise ApiError(422, f"the .zip must hold exactly one .onnx file, not {len(onnx)}.")
        into.mkdir(parents=True)
        for m in members:
            target = into / m.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    return into / onnx[0].filename


def _keep(store: Any, path: Path, label: str, info: Any, tags: list[str], token: Token
          ) -> dict[str, Any]:  # fmt: skip
    """Store the checked upload: its bytes (a tree for a .zip), its folder under
    ``uploads/<id>/`` (moved in by one rename) and its ``models`` row."""
    folder = path.parent
    single = path.name in ("model.onnx", "model.pt2") and len(list(folder.iterdir())) == 1
    sha = store.put_file(path, kind="model") if single else store.put_tree(folder)
    rid = uuid.uuid4().hex
    final = Path(store.root) / "uploads" / rid
    folder.rename(final)
    source = final / path.name
    try:
        rec = store.register_model(label, source=str(source), source_kind=path.suffix[1:],
                                   inputs=list(info.inputs), outputs=list(info.outputs),
                                   artifact=sha)  # fmt: skip
        _set_tags(store, rec.id, tags)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    d = model_json(store, rec)
    d.update(parameters=info.parameters, uploaded_by=token.name, upload_dir=rid)
    return d


@router.post("/models/zoo", status_code=201)
def register_zoo(body: ZooModel, request: Request, token: Token = OPERATOR) -> dict[str, Any]:
    """Register a built-in zoo model by name (``zoo:NAME`` as a job's source)."""
    from robopt_compile.zoo import zoo_names

    names = zoo_names()
    name = body.name.removeprefix("zoo:")
    if name not in names:
        raise ApiError(422, f"unknown zoo model {name!r}; known: {', '.join(names)}.")
    store = request.app.state.store
    rec = store.register_model(name, source=f"zoo:{name}", source_kind="zoo")
    _set_tags(store, rec.id, body.tags)
    return model_json(store, rec)


@router.get("/models")
def list_models(request: Request, token: Token = VIEWER) -> list[dict[str, Any]]:
    """Every model, newest first (sources and the engines robopt derived from them)."""
    store = request.app.state.store
    return [model_json(store, m) for m in store.models(limit=500)]


@router.get("/models/{model_id}")
def show_model(model_id: str, request: Request, token: Token = VIEWER) -> dict[str, Any]:
    store = request.app.state.store
    rec = store.get_model(model_id)
    d = model_json(store, rec)
    d["lineage"] = store.lineage(rec.id)
    d["children"] = [c.to_dict() for c in store.children(rec.id)]
    return d


@router.put("/models/{model_id}/tags")
def put_tags(model_id: str, body: Tags, request: Request, token: Token = OPERATOR
             ) -> dict[str, Any]:  # fmt: skip
    store = request.app.state.store
    rec = store.get_model(model_id)
    _set_tags(store, rec.id, body.tags)
    return model_json(store, rec)


@router.delete("/models/{model_id}")
def delete_model(model_id: str, request: Request, token: Token = OPERATOR) -> dict[str, Any]:
    """Forget an uploaded or registered model that nothing was derived from (its object goes
    at the next ``store gc``)."""
    store = request.app.state.store
    rec = store.get_model(model_id)
    if store.children(rec.id):
        raise ApiError(409, f"model {rec.id[:12]} has derived models (engines built from it); "
                       "it stays for their lineage.")  # fmt: skip
    uploads = Path(store.root) / "uploads"
    folder = Path(rec.source or "").parent
    store.write(lambda c: (c.execute("DELETE FROM model_tags WHERE model_id=?", (rec.id,)),
                           c.execute("DELETE FROM models WHERE id=?", (rec.id,))))  # fmt: skip
    if rec.source_kind in ("onnx", "pt2") and folder.parent == uploads:  # only what it wrote
        shutil.rmtree(folder, ignore_errors=True)
    return {"deleted": rec.id, "time": utc_now()}
