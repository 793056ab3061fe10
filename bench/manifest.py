"""Read and check a bundle's ``manifest.json`` (docs/BUNDLE.md, schema version 1).

This is the robot's first contact with a bundle that was copied over a network or a USB stick,
so every problem becomes one ``InputError`` line that says what is wrong and what to do, and
the sha256 check catches truncated or edited files before they produce wrong actions.

A bundle may also come from someone else, so every path a loader will open (engine files, the
paths the engine config names, reference files) must be a file of the bundle: relative, no
``..``, listed (the config's paths among the engine's ``files``), hashed in ``files`` when
verifying, and no symbolic link anywhere in the folder (``robopt_compile.paths``). All of it
is checked here, before any runtime is imported.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from robopt_compile.errors import InputError
from robopt_compile.jsonutil import sha256_file
from robopt_compile.paths import CONFIG_PATHS, member, refuse_links, relative
from robopt_compile.targets.registry import TARGETS

# The runtimes a graph may name: the backend registry's names (a standard-library table).
RUNTIMES = tuple(TARGETS)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def _inside(root: Path, rel: str, what: str) -> Path:
    """``root / rel``, refusing absolute paths and ``..`` so a manifest cannot point outside."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise InputError(f"{root / MANIFEST}: {what} path {rel!r} must be relative to the bundle.")
    return root / p


def _require(d: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise InputError(f"{where}: missing key {key!r}; the bundle is incomplete or not robopt's.")
    if not isinstance(d[key], kind):
        raise InputError(f"{where}: key {key!r} has the wrong type ({type(d[key]).__name__}).")
    return d[key]


def verify_files(root: Path, files: dict[str, str]) -> None:
    """Check every listed file exists and matches its sha256.

    Raises:
        InputError: a file is missing or differs; the message names the first one.
    """
    for rel, digest in sorted(files.items()):
        path = _inside(root, rel, "file")
        if not path.is_file():
            raise InputError(
                f"bundle file {rel!r} listed in manifest.json is missing from {root}; "
                "copy the whole bundle folder again."
            )
        if sha256_file(path) != str(digest).lower():
            raise InputError(
                f"bundle file {rel!r} does not match its sha256 in manifest.json: it was "
                "truncated or edited. Copy the bundle again (or pass --no-verify to skip)."
            )


def runtimes(manifest: dict[str, Any]) -> list[str]:
    """Every runtime a bundle needs: its ``backend`` first, then any other its graphs name
    (a VLA whose decode steps run on a second runtime)."""
    main = manifest["backend"]
    return list(dict.fromkeys([main, *(g.get("backend", main) for g in
                                       manifest.get("graphs", []))]))  # fmt: skip


def native_code(manifest: dict[str, Any]) -> list[str]:
    """The engines of a bundle that load native code when they run: a TVM library (a shared
    object, loaded with dlopen) or a prebuilt TensorRT engine (a serialized plan). Running
    such a bundle runs whatever code its author put there, so ``robopt-bench serve`` refuses
    them unless started with ``--allow-native-code``. ONNX models (ONNX Runtime, OpenVINO, a
    deferred TensorRT build from ONNX) are data the runtime parses."""
    main = manifest.get("backend")
    engines = [(None, main, manifest.get("engine") or {})]
    engines += [(g.get("name"), g.get("backend", main), g.get("engine") or {})
                for g in manifest.get("graphs") or [] if isinstance(g, dict)]  # fmt: skip
    found = []
    for name, backend, engine in engines:
        config = engine.get("config") or {} if isinstance(engine, dict) else {}
        where = f"graph {name!r}: " if name else ""
        if backend == "tvm":
            found.append(f"{where}a TVM shared library")
        elif backend == "tensorrt" and not config.get("deferred"):
            found.append(f"{where}a prebuilt TensorRT engine plan")
    return found


def _check_graphs(
    root: Path, manifest: dict[str, Any], backend: str, where: str, hashed: set[str] | None
) -> None:
    """A multi-graph manifest: every graph's engine files, the driver, and that the graphs fit
    together (what one produces is what the next consumes); one-line InputError otherwise."""
    graphs = _require(manifest, "graphs", list, where)
    bad = f"{where}: inconsistent multi-graph bundle:"
    if not graphs:
        raise InputError(f"{bad} 'graphs' is empty.")
    by_name: dict[str, dict[str, Any]] = {}
    for g in graphs:
        if not isinstance(g, dict):
            raise InputError(f"{bad} every entry of 'graphs' must be an object.")
        name = _require(g, "name", str, f"{where} graphs")
        if name in by_name:
            raise InputError(f"{bad} graph {name!r} appears twice.")
        by_name[name] = g
        gw = f"{where} graph {name!r}"
        engine = _require(g, "engine", dict, gw)
        gb = g.get("backend", backend)  # a graph may run on another runtime (llm-decode)
        if gb not in RUNTIMES:
            raise InputError(f"{bad} graph {name!r} names an unknown backend {gb!r}.")
        _check_engine(root, engine, gb, where, f"graphs[{name}].engine", hashed,
                      f"graph {name!r}: ")  # fmt: skip
        for key in ("inputs", "outputs"):
            _require(g, key, list, gw)
    driver = _require(manifest, "driver", dict, where)
    kind = _require(driver, "kind", str, f"{where} driver")
    config = _require(driver, "config", dict, f"{where} driver")
    from .driver import DRIVERS

    if kind not in DRIVERS:
        raise InputError(
            f"{where}: driver {kind!r} is not known to this robopt-bench (known: "
            f"{', '.join(DRIVERS)}); update robopt on the robot."
        )
    if kind == "vla-greedy":
        _check_vla(by_name, config, bad)
    if kind == "ddim":
        missing = [g for g in ("encoder", "denoiser") if g not in by_name]
        if missing:
            raise InputError(f"{bad} the ddim driver needs graph(s) {missing}.")
        for key in ("timesteps", "alpha_cumprod", "alpha_cumprod_prev", "horizon", "action_dim"):
            if key not in config:
                raise InputError(f"{bad} driver.config has no {key!r}.")
        n = {len(config[k]) for k in ("timesteps", "alpha_cumprod", "alpha_cumprod_prev")}
        if len(n) != 1:
            raise InputError(f"{bad} the DDIM schedule's lists differ in length.")
    _check_reference(root, manifest, where, hashed)


def _names(g: dict[str, Any], key: str) -> dict[str, Any]:
    return {str(v.get("name")): v for v in g[key] if isinstance(v, dict)}


def _check_vla(graphs: dict[str, dict[str, Any]], config: dict[str, Any], bad: str) -> None:
    """vision -> image_embeds, embed -> token_embeds, both of the llm's width; the llm's cache
    inputs and outputs one pair per layer of driver.config."""
    missing = [g for g in ("vision", "embed", "llm") if g not in graphs]
    if missing:
        raise InputError(f"{bad} the vla-greedy driver needs graph(s) {missing}.")
    layers = config.get("layers")
    if not isinstance(layers, int) or layers < 1:
        raise InputError(f"{bad} driver.config.layers must be a positive integer.")
    for key in ("vocab_size", "n_bins", "action_dims", "kv_heads", "head_dim", "q01", "q99",
                "normalized"):  # fmt: skip
        if key not in config:
            raise InputError(f"{bad} driver.config has no {key!r}.")
    vis_out, emb_out = _names(graphs["vision"], "outputs"), _names(graphs["embed"], "outputs")
    llm_in, llm_out = _names(graphs["llm"], "inputs"), _names(graphs["llm"], "outputs")
    needed = (("vision", vis_out, "image_embeds"), ("embed", emb_out, "token_embeds"),
              ("llm", llm_in, "inputs_embeds"), ("llm", llm_out, "logits"))  # fmt: skip
    for g, names, key in needed:
        if key not in names:
            raise InputError(f"{bad} graph {g!r} has no {key!r}.")
    widths = {g: (names[key].get("shape") or [None])[-1] for g, names, key in (
        ("vision image_embeds", vis_out, "image_embeds"),
        ("embed token_embeds", emb_out, "token_embeds"),
        ("llm inputs_embeds", llm_in, "inputs_embeds"))}  # fmt: skip
    known = {w for w in widths.values() if isinstance(w, int)}
    if len(known) > 1:
        raise InputError(
            f"{bad} embedding widths differ: "
            + ", ".join(f"{k} {v}" for k, v in widths.items())
            + "; the llm cannot take what vision and embed produce."
        )
    for i in range(layers):
        for kv in "kv":
            for what, names, wanted in (("llm input", llm_in, f"past.{i}.{kv}"),
                                        ("llm output", llm_out, f"present.{i}.{kv}")):  # fmt: skip
                if wanted not in names:
                    raise InputError(
                        f"{bad} {what} {wanted!r} is missing (driver.config.layers is {layers})."
                    )
    extra = [n for n in llm_in if n.startswith("past.") and int(n.split(".")[1]) >= layers]
    if extra:
        raise InputError(f"{bad} llm takes {extra[0]!r} but driver.config.layers is {layers}.")
    if "llm-decode" in graphs:  # the same graph on another runtime: the same interface
        for key, names in (("inputs", llm_in), ("outputs", llm_out)):
            if set(_names(graphs["llm-decode"], key)) != set(names):
                raise InputError(f"{bad} graph 'llm-decode' has other {key} than 'llm'.")


def load_manifest(bundle_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """Load, validate and (optionally) hash-check a bundle's manifest.

    Checks what the harness relies on: schema version, backend, engine files and reference
    files. Engine and reference files must exist even without ``verify``; ``verify`` adds the
    sha256 check of everything in ``files``, which costs a read of the whole bundle.

    Raises:
        InputError: missing folder, not a bundle, bad JSON, newer schema, missing files,
            sha256 mismatch.
    """
    root = Path(bundle_dir)
    if not root.exists():
        raise InputError(f"bundle folder {str(root)!r} does not exist.")
    if not root.is_dir():
        raise InputError(f"{str(root)!r} is a file, not a bundle folder.")
    mpath = root / MANIFEST
    if mpath.is_symlink():
        raise InputError(
            f"{mpath} is a symbolic link; a bundle holds only plain files and folders. Copy it "
            "again without links (cp -rL, rsync -L) or compile it again."
        )
    if not mpath.is_file():
        raise InputError(
            f"{str(root)!r} is not a robopt bundle (no {MANIFEST}); pass the folder that "
            "`robopt-compile -o` wrote."
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{mpath}: not valid JSON ({exc}); the bundle is corrupt.") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{mpath}: expected a JSON object at the top level.")

    where = str(mpath)
    version = _require(manifest, "schema_version", int, where)
    if isinstance(version, bool) or version < 1:
        raise InputError(f"{where}: schema_version {version!r} is not valid.")
    if version > SCHEMA_VERSION:
        raise InputError(
            f"{where}: bundle schema_version {version} is newer than this robopt-bench reads "
            f"({SCHEMA_VERSION}); upgrade robopt-compile on the robot."
        )
    backend = _require(manifest, "backend", str, where)
    refuse_links(root)  # runtimes open files no manifest names (external data, .bin)
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise InputError(f"{where}: 'files' must map relative paths to sha256 digests.")
    # With verify, every file a loader opens must be one whose sha256 is checked below.
    hashed = {PurePosixPath(str(rel)).as_posix() for rel in files} if verify else None
    if "graphs" in manifest:  # a multi-graph bundle (docs/BUNDLE.md)
        _check_graphs(root, manifest, backend, where, hashed)
    else:
        engine = _require(manifest, "engine", dict, where)
        _check_engine(root, engine, backend, where, "engine", hashed)
        ref = _check_reference(root, manifest, where, hashed)
        tol = _require(ref, "tolerance", dict, f"{where} reference")
        for key in ("cosine_min", "atol", "rtol"):
            _require(tol, key, (int, float), f"{where} reference.tolerance")
    if verify:
        verify_files(root, files)
    return manifest


def _check_engine(
    root: Path, engine: dict[str, Any], backend: str, where: str, what: str,
    hashed: set[str] | None, graph: str = "",
) -> None:  # fmt: skip
    """An engine entry: its folder inside the bundle, its backend, every file present (and,
    with ``hashed``, hashed), and every path its config names one of its files."""
    at = f"{where}: {what}"
    edir_rel = relative(_require(engine, "dir", str, f"{where} {what}"), f"{at}.dir")
    edir = root / edir_rel
    efiles = _require(engine, "files", list, f"{where} {what}")
    config = _require(engine, "config", dict, f"{where} {what}")
    if engine.get("backend", backend) != backend:
        raise InputError(
            f"{where} {what}: backend is {backend!r} but engine.backend is {engine['backend']!r}."
        )
    names = [relative(f, f"{at}.files entry").as_posix() for f in efiles]
    missing = [n for n in names if not (edir / n).is_file()]  # no links: refuse_links ran
    if missing:
        raise InputError(
            f"{graph}engine file(s) {missing} missing from {edir}; copy the whole bundle folder "
            "again."
        )
    if hashed is not None:
        _require_hashed(at, [(edir_rel / n).as_posix() for n in names], hashed)
    if engine.get("compressed"):  # the config names what the files unpack to (bench/compress.py)
        from .compress import description

        _, stored = description(engine)
        for name in stored:
            member(edir, name, f"{at}.compressed file", names)
        originals = [PurePosixPath(e["original"]).as_posix() for e in stored.values()]
        for key in CONFIG_PATHS:
            if key in config:
                rel = relative(config[key], f"{at}.config.{key}").as_posix()
                if rel not in originals:
                    raise InputError(
                        f"{at}.config.{key} {config[key]!r} is not one of the engine's listed "
                        "files; the bundle is corrupt or not robopt's."
                    )
    else:
        for key in CONFIG_PATHS:
            if key in config:
                member(edir, config[key], f"{at}.config.{key}", names)


def _require_hashed(at: str, rels: list[str], hashed: set[str]) -> None:
    for rel in rels:
        if rel not in hashed:
            raise InputError(
                f"{at} file {rel!r} is not hashed in manifest.json 'files', so it cannot be "
                "verified; the bundle is corrupt or not robopt's."
            )


def _check_reference(
    root: Path, manifest: dict[str, Any], where: str, hashed: set[str] | None
) -> dict[str, Any]:
    ref = _require(manifest, "reference", dict, where)
    for key in ("inputs", "outputs"):
        rel = ref.setdefault(key, f"reference/{key}.npz")
        p = relative(rel, f"{where}: reference.{key}")
        if not (root / p).is_file():
            raise InputError(f"reference file {rel!r} is missing from {root}.")
        if hashed is not None:
            _require_hashed(f"{where}: reference", [p.as_posix()], hashed)
    return ref
