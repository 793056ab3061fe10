"""The architecture search's space on the ONNX graph (issue 21, part 1).

Two kinds of choice, both read off the graph itself, so any ONNX policy has a space:

- **width**: per coupled channel group (``passes/prune/groups.py``: a Conv/Gemm/MatMul's
  output channels with every layer that must lose the same channels), how many channels it
  keeps: the multipliers ``MULTIPLIERS`` of its size, rounded up to a multiple of ``multiple``
  (8: what the CPU kernels' vector widths like) and at least ``multiple``. Groups the analysis
  blocks, the first layers (they read the raw observation) and groups smaller than
  ``2 * multiple`` keep their width; the space says why.
- **depth**: residual blocks with an identity shortcut (``y = x + f(x)`` where ``f``'s nodes
  read only ``x``, constants and each other, and nothing else reads them): dropping ``f``
  keeps every shape, so the block may go.

``apply`` realises a choice: it drops the chosen blocks, then slices every group to its
width with ``ChannelPrunePass`` (per-group ratios, L1-norm channel choice), so a candidate is a
plain smaller ONNX model that any backend builds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

MULTIPLIERS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
MAX_BLOCK_NODES = 64  # a residual body larger than this is not looked for further


@dataclass(frozen=True)
class WidthChoice:
    """A coupled channel group and the channel counts it may keep (ascending, last: all)."""

    group: str  # the name of its first producer (ChannelPrunePass's layer_ratios key)
    producers: tuple[str, ...]
    size: int
    widths: tuple[int, ...]


@dataclass(frozen=True)
class DepthChoice:
    """A residual block with an identity shortcut: ``add`` = skip + body(skip)."""

    add: str
    skip: str  # the shortcut's value name
    body: tuple[str, ...]  # node names, topological order


@dataclass
class ArchSpace:
    widths: list[WidthChoice]
    depths: list[DepthChoice]
    fixed: dict[str, str] = field(default_factory=dict)  # group -> why its width is fixed

    def size(self) -> int:
        """How many sub-networks the space holds."""
        return math.prod(len(w.widths) for w in self.widths) * 2 ** len(self.depths)

    def to_json(self) -> dict[str, Any]:
        return {
            "widths": [{"group": w.group, "producers": list(w.producers), "size": w.size,
                        "widths": list(w.widths)} for w in self.widths],
            "depths": [{"add": d.add, "skip": d.skip, "body": list(d.body)} for d in self.depths],
            "fixed": dict(self.fixed),
            "size": self.size(),
        }  # fmt: skip


def width_options(size: int, multipliers: Sequence[float], multiple: int) -> tuple[int, ...]:
    """Kept-channel counts for a group of ``size``: each multiplier, rounded up to a multiple
    of ``multiple`` (never above ``size``, never below ``multiple``)."""
    out = set()
    for m in multipliers:
        n = max(multiple, math.ceil(size * m / multiple) * multiple)
        out.add(min(size, n))
    out.add(size)
    return tuple(sorted(out))


def arch_space(
    model: ir.Model,
    multipliers: Sequence[float] = MULTIPLIERS,
    multiple: int = 8,
    protect: Sequence[str] | None = None,
) -> ArchSpace:
    """The width and depth choices of ``model`` (module doc)."""
    from robopt_compile.passes.prune.channels import first_layers
    from robopt_compile.passes.prune.groups import Analysis

    protected = set(first_layers(model) if protect is None else protect)
    widths, fixed = [], {}
    for g in Analysis(model).final_groups():
        names = tuple(p.node.name for p in g.producers)
        if not names:
            continue
        if g.blocked:
            fixed[g.name] = "blocked: " + g.blocked[0]
        elif protected & set(names):
            fixed[g.name] = "protected (reads the observation)"
        elif g.size < 2 * multiple:
            fixed[g.name] = f"{g.size} channels: fewer than 2 x {multiple}"
        else:
            widths.append(WidthChoice(g.name, names, g.size,
                                      width_options(g.size, multipliers, multiple)))  # fmt: skip
    return ArchSpace(widths, residual_blocks(model), fixed)


def residual_blocks(model: ir.Model) -> list[DepthChoice]:
    """Identity-shortcut residual blocks (module doc), in graph order."""
    outputs = {id(v) for v in model.graph.outputs}
    inits = model.graph.initializers
    found = []
    for add in model.graph:
        if add.op_type != "Add" or len(add.inputs) != 2 or id(add.outputs[0]) in outputs:
            continue
        for skip, out in (add.inputs, reversed(add.inputs)):
            body = _closed_body(skip, out, add, inits)
            if body is not None and _same_shape(skip, add.outputs[0]):
                found.append(DepthChoice(add.name, skip.name, tuple(n.name for n in body)))
                break
    return found


def _closed_body(skip: ir.Value, out: ir.Value, add: ir.Node, inits: Mapping) -> list | None:
    """The nodes computing ``out`` from ``skip`` alone, if nothing outside reads them."""
    if out.producer() is None or skip is out:
        return None
    body: dict[int, ir.Node] = {}
    stack = [out.producer()]
    while stack:
        node = stack.pop()
        if id(node) in body:
            continue
        body[id(node)] = node
        if len(body) > MAX_BLOCK_NODES:
            return None
        for v in node.inputs:
            if v is None or v is skip or v.name in inits or v.const_value is not None:
                continue
            if v.producer() is None:
                return None  # reaches a graph input: not a function of the shortcut alone
            stack.append(v.producer())
    members = set(body)
    if not any(v is skip for n in body.values() for v in n.inputs):
        return None
    for n in body.values():
        for v in n.outputs:
            for user, _ in v.uses():
                if id(user) not in members and user is not add:
                    return None
    order = {id(n): i for i, n in enumerate(add.graph or [])}
    return sorted(body.values(), key=lambda n: order.get(id(n), 0))


def _same_shape(a: ir.Value, b: ir.Value) -> bool:
    return a.shape is not None and b.shape is not None and list(a.shape) == list(b.shape)


def apply(
    model: ir.Model,
    space: ArchSpace,
    widths: Mapping[str, int] | None = None,
    drop: Sequence[str] = (),
) -> ir.Model:
    """A copy of ``model`` with the blocks ``drop`` (their Add names) removed and each group
    of ``widths`` (group -> kept channels) sliced; groups not named keep their width."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    from robopt_compile import ir as rir
    from robopt_compile.errors import InputError
    from robopt_compile.passes.prune.channels import ChannelPrunePass

    out = rir.clone(model)
    blocks = {d.add: d for d in space.depths}
    by_group = {w.group: w for w in space.widths}
    unknown = [b for b in drop if b not in blocks] + [g for g in widths or {} if g not in by_group]
    if unknown:
        raise InputError(f"not in this model's search space: {unknown[:4]}.")
    nodes = {n.name: n for n in out.graph}
    for name in drop:
        add = nodes[name]
        skip = next(v for v in add.inputs if v is not None and v.name == blocks[name].skip)
        ir.convenience.replace_all_uses_with(add.outputs[0], skip)
    if drop:
        RemoveUnusedNodesPass()(out)
    ratios = {}
    for g, n in (widths or {}).items():
        size = by_group[g].size
        if not 1 <= n <= size:
            raise InputError(f"group {g!r} has {size} channels; cannot keep {n}.")
        if n < size:
            ratios[g] = (size - n) / size
    if ratios:
        alive = {n.name for n in out.graph}
        ratios = {g: r for g, r in ratios.items() if g in alive}  # a dropped block's group
        ChannelPrunePass(0.0, layer_ratios=ratios, protect=[], multiple=1)(out)
    return out
