"""The runtime API: call a compiled bundle from robot code (a ROS 2 node, a control loop).

    from robopt_compile import load_bundle

    policy = load_bundle("out/policy", threads=1)   # hashes checked once, the engine loaded
    action = policy({"image": img, "proprio": q})["action"]
    policy.close()                                   # or: with load_bundle(...) as policy:

It needs numpy and the bundle's runtime only (the robot-side install ``robopt-bench`` uses;
docs/DEPLOY.md). Every call checks the feeds against the bundle's inputs (names, dtypes,
static dims) and raises ``InputError`` with one line saying what differs; a batch axis of 1
is added to an array one axis short. A multi-graph bundle (a VLA, a diffusion policy) is one
call per control step through its driver, as ``robopt-bench`` runs it: ``policy(obs)`` takes
one observation (the arrays of ``policy.inputs``) and returns ``{"actions": ...}``, plus
``"tokens"`` for a VLA (a diffusion policy draws its initial ``noise`` unless the call gives
it). Calls are serialised by a lock: an engine is not re-entrant, so two
threads calling at once take turns instead of corrupting each other's outputs.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import InputError, RoboptError
from robopt_compile.feeds import check_feeds_match
from robopt_compile.paths import member

from .harness import enter_runner, load_npz, open_bundle
from .manifest import MANIFEST, load_manifest


@dataclass(frozen=True)
class InputSpec:
    """One input: its name, shape (an int per static dim, a string per symbolic one), dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


class Policy:
    """A loaded bundle: ``policy(feeds) -> {output name: array}``. Open it with
    :func:`load_bundle`; close it (or use ``with``) to free the engine."""

    def __init__(self, bundle: str | Path, threads: int | None = 1, verify: bool = True) -> None:
        self.path = Path(bundle)
        if not (self.path / MANIFEST).is_file():
            raise InputError(f"{self.path} is not a bundle (no {MANIFEST}); give the folder "
                             "robopt-compile -o wrote.")  # fmt: skip
        if threads is not None and threads < 1:
            raise InputError(f"threads must be >= 1 (got {threads}); None: the runtime's default.")
        self._lock = threading.Lock()
        self._stack = contextlib.ExitStack()
        self.threads = threads
        try:
            raw = json.loads((self.path / MANIFEST).read_text())
            if "graphs" in raw:
                self._open_driver(verify)
            else:
                self._open_engine(verify)
        except BaseException:
            self._stack.close()
            raise
        self.closed = False

    def _open_engine(self, verify: bool) -> None:
        b = open_bundle(self.path, verify=verify)
        self.manifest = b.manifest
        self.inputs = [InputSpec(i["name"], tuple(i["shape"]), i["dtype"])
                       for i in b.manifest["inputs"]]  # fmt: skip
        self.outputs = [o["name"] for o in b.manifest["outputs"]]
        self.optional: set[str] = set()
        runner = enter_runner(self._stack, b, self.threads)
        self._call = runner.infer_unchecked  # the feeds are checked here, once per call

    def _open_driver(self, verify: bool) -> None:
        from .multigraph import open_driver

        self.manifest = load_manifest(self.path, verify=verify)
        rel = self.manifest["reference"]["inputs"]
        obs = load_npz(member(self.path, rel, f"{self.path / MANIFEST}: reference.inputs"))
        # the reference holds N observations; one control step takes one of them
        self.inputs = [InputSpec(k, tuple(v.shape[1:]), str(v.dtype)) for k, v in obs.items()]
        # a diffusion policy draws its initial noise itself unless the caller fixes it
        self.optional = {"noise"} if self.manifest["driver"]["kind"] == "ddim" else set()
        driver = open_driver(self.path, self.manifest, self.threads, self._stack)
        self.outputs = ["actions", "tokens"] if hasattr(driver, "decode") else ["actions"]

        def step(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            r = driver.step(feeds)
            out = {"actions": np.asarray(r.actions)}
            if "tokens" in self.outputs:
                out["tokens"] = np.asarray(r.tokens)
            return out

        self._call = step

    def _feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            names = [i.name for i in self.inputs]
            raise InputError(f"call the policy with a dict {{input name: array}} of {names}, "
                             f"not {type(feeds).__name__}.")  # fmt: skip
        out = {}
        for spec in self.inputs:
            a = feeds.get(spec.name)
            if a is None:
                continue  # check_feeds_match names what is missing
            a = np.asarray(a)
            if a.ndim == len(spec.shape) - 1 and (
                spec.shape[:1] == (1,) or isinstance(spec.shape[0], str)
            ):
                a = a[None]
            out[spec.name] = np.ascontiguousarray(a)
        out.update({k: v for k, v in feeds.items() if k not in out and k not in
                    {s.name for s in self.inputs}})  # fmt: skip
        specs = [s for s in self.inputs if s.name in out or s.name not in self.optional]
        check_feeds_match(out, specs, f"{self.path.name}")
        return out

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One inference (one control step for a multi-graph bundle)."""
        checked = self._feeds(feeds)
        with self._lock:
            if self.closed:
                raise InputError(f"policy {self.path} is closed; load_bundle it again.")
            try:
                return self._call(checked)
            except RoboptError:
                raise
            except Exception as exc:  # each runtime raises its own types: one line
                msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise InputError(f"the engine failed: {msg}") from exc

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self._stack.close()

    def __enter__(self) -> Policy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        ins = ", ".join(f"{i.name}{list(i.shape)} {i.dtype}" for i in self.inputs)
        m = self.manifest
        return (f"Policy({str(self.path)!r}, {m.get('backend')} {m.get('precision')}: {ins} "
                f"-> {', '.join(self.outputs)})")  # fmt: skip


def load_bundle(bundle: str | Path, threads: int | None = 1, verify: bool = True) -> Policy:
    """Load a bundle for robot code: check every file's sha256 (``verify``), load its engine
    with ``threads`` intra-op threads (None: the runtime's default, usually every core).

    Raises:
        InputError: not a bundle, or a damaged one (one line).
        BackendUnavailableError: its runtime is not installed here (names the pip extra).
    """
    return Policy(bundle, threads, verify)
