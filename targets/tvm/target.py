"""TVM targets: the LLVM CPU target a build compiles for, as a TVM 0.27 JSON dict, and its key.

A hardware profile names its target in ``backend_options.tvm.target``; the ``host`` profile gets
this machine's CPU as LLVM names it. The build's thread count enters the target (``num-cores``),
and the target with the TVM version keys the tuning database. This module imports nothing heavy:
the runner reads ``host_arch`` on the robot.
"""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any

from robopt_compile.errors import BuildError


def host_arch() -> str:
    """This machine's ISA as ELF headers and target triples spell it (x86_64, aarch64)."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def target_arch(target: dict[str, Any]) -> str:
    """The ISA a target dict compiles for: its ``mtriple``'s first field, else this machine."""
    triple = str(target.get("mtriple", ""))
    return triple.split("-")[0] if triple else host_arch()


def host_target(threads: int | None, cores: int) -> dict[str, Any]:
    """This machine as a TVM target: LLVM's name for its CPU, so all its vector units are used."""
    from tvm.target import codegen

    return {
        "kind": "llvm",
        "mcpu": str(codegen.llvm_get_system_cpu()),
        "num-cores": threads or cores,
    }


def resolve_target(profile: Any, threads: int | None, robot_threads: int | None = None
                   ) -> dict[str, Any]:  # fmt: skip
    """The profile's ``backend_options.tvm.target``, or the host's when the profile is the host.

    ``num-cores`` is the robot's thread count (MetaSchedule sizes its parallel loops by it, so
    kernels for 4 cores are not the ones a 1-thread loop wants): ``robot_threads`` when given,
    else the board's own (its target's ``num-cores``, else its cores). On the host profile the
    robot is this machine, so the build's ``threads`` stand in for it. The build's threads
    never decide a board's kernels (``-t raspberry-pi-5 --threads 1`` builds for 4 cores).
    """
    opts = dict(getattr(profile, "backend_options", {}).get("tvm", {}))
    target = opts.get("target")
    if target is None:
        if getattr(profile, "path", "") != "detected":
            raise BuildError(
                f"hardware profile {getattr(profile, 'name', '?')!r} names no TVM target: add "
                '[backend_options.tvm] target = { kind = "llvm", mtriple = ..., mcpu = ... }.'
            )
        return host_target(robot_threads or threads, getattr(profile, "cpu_cores", 1))
    if isinstance(target, str):
        raise BuildError(
            f"TVM 0.27 takes targets as JSON dicts, not strings ({target!r}): write "
            '{ kind = "llvm", mcpu = "...", ... } in the profile.'
        )
    target = dict(target)
    cores = getattr(profile, "cpu_cores", None)
    target["num-cores"] = robot_threads or target.get("num-cores") or cores or 1
    return target


def target_key(target: dict[str, Any], tvm_version: str) -> str:
    """Tuning records are valid for one target and one TVM version: their folder's name."""
    blob = json.dumps({"target": target, "tvm": tvm_version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
