"""Channel dependency analysis for structured pruning on an ONNX graph.

Removing output channel ``c`` of a Conv/Gemm/MatMul is only valid if every tensor derived from
that channel loses the same position, and every weighted consumer drops the matching input
slice. This module walks the graph once, in topological order, and gives every tensor that
carries prunable channels a *channel space*: its channel axis and, per channel position, the
``(group, index)`` it comes from. Producers open a new group; channel-preserving ops pass the
space through; ops that couple channels merge groups (a residual ``Add`` of two producers'
outputs makes them one group, pruned together or not at all); ``Concat`` on the channel axis
concatenates spaces, so each input's group keeps its own offsets; and any op whose semantics
would change (a graph output, an attention ``MatMul`` of two activations, a ``Reshape`` that
splits channels into heads, a LayerNorm over more than the channels, an op not in the tables)
*blocks* the groups it touches, with the reason. Normalizations over the channels alone
(LayerNorm on a channels-last tensor, a ReduceMean over the channels with keepdims, as a
written-out channels-first LayerNorm has) let the channels through: their statistics are then
taken over the kept channels, an approximation like pruning itself.

The result is a list of :class:`Group` plus the slicing actions that realise a choice of kept
channels: producer weights lose rows, consumer weights lose input slices, per-channel
parameters (BatchNorm, depthwise Conv, broadcast constants) lose entries, and a Reshape's
hard-coded shape gets the new channel count. Nothing is guessed: a value without static rank,
a weight that is not an initializer, or a weight shared by two weighted nodes blocks its group
(small per-channel constants shared by several nodes get a copy each first:
:func:`passes.prune.unshare.unshare_small_initializers`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

# Ops that map channel c of their first input to channel c of their output, element-wise.
UNARY_PASSTHROUGH = frozenset({
    "Relu", "LeakyRelu", "PRelu_", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "Tanh",
    "Softplus", "Softsign", "HardSwish", "Mish", "Gelu", "Erf", "Identity", "Dropout", "Neg",
    "Abs", "Exp", "Sqrt", "Clip", "Cast", "Floor", "Ceil", "Round", "Swish",
})  # fmt: skip
# Spatial ops over (N, C, ...) that keep C on axis 1.
SPATIAL_PASSTHROUGH = frozenset({
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
    "GlobalLpPool",
})  # fmt: skip
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"})
REDUCE = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1"})
WEIGHTED = frozenset({"Conv", "Gemm", "MatMul"})


@dataclass(frozen=True)
class Entry:
    """Channel position ``index`` of group ``group`` (``group`` None: a fixed channel)."""

    group: int | None
    index: int


@dataclass
class Space:
    """The channel axis of a tensor and where each of its channels comes from."""

    axis: int  # non-negative, relative to the tensor's rank
    entries: list[Entry]

    def groups(self) -> set[int]:
        return {e.group for e in self.entries if e.group is not None}


@dataclass
class Producer:
    """A weighted node whose output channels a group owns."""

    node: ir.Node
    weight: ir.Value
    axis: int  # output-channel axis of the weight
    bias: ir.Value | None = None
    bias_axis: int = 0


@dataclass
class Slice:
    """Slice constant ``value`` along ``axis`` by the kept positions of ``space``."""

    value: ir.Value | None
    axis: int
    space: Space
    node: ir.Node
    # "consumer", "param", "shape" (value is a 1-D shape; axis is its index) or "group" (the
    # node's ``group`` attribute becomes the kept count: depthwise Conv; value is None)
    role: str


@dataclass
class Group:
    """Channels that must be pruned together: one or more coupled producers' outputs."""

    id: int
    size: int
    producers: list[Producer] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.producers[0].node.name if self.producers else f"group{self.id}"


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def add(self, x: int) -> None:
        self.parent[x] = x

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
        return ra


def _const(v: ir.Value | None) -> np.ndarray | None:
    if v is None:
        return None
    t = v.const_value
    if t is None:
        t = ir.convenience.get_const_tensor(v)
    return None if t is None else t.numpy()


def _rank(v: ir.Value) -> int | None:
    return None if v.shape is None else len(v.shape)


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    a = node.attributes.get(name)
    return default if a is None else int(a.value)


def _private_initializer(v: ir.Value | None, node: ir.Node) -> str | None:
    """Why ``v`` cannot be sliced for ``node`` alone, or None when it can."""
    if v is None:
        return "missing"
    if not v.is_initializer() or v.const_value is None:
        return f"{v.name!r} is not an initializer"
    if len(v.uses()) != 1:
        return f"weight {v.name!r} is shared by {len(v.uses())} nodes"
    return None


class Analysis:
    """Channel groups of one model and the slices that realise a pruning choice."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.groups: dict[int, Group] = {}
        self.slices: list[Slice] = []
        self.spaces: dict[ir.Value, Space] = {}
        self._uf = _UnionFind()
        self._walk()

    # ---- results ---------------------------------------------------------------------------

    def root(self, gid: int) -> int:
        return self._uf.find(gid)

    def final_groups(self) -> list[Group]:
        """Merged groups, each with its producers and every reason it is blocked."""
        out: dict[int, Group] = {}
        for gid, g in self.groups.items():
            r = self.root(gid)
            merged = out.setdefault(r, Group(r, g.size))
            merged.producers.extend(g.producers)
            merged.blocked.extend(b for b in g.blocked if b not in merged.blocked)
        return list(out.values())

    def kept_mask(self, space: Space, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Boolean mask over ``space``'s positions given kept indices per (root) group."""
        mask = np.ones(len(space.entries), bool)
        for i, e in enumerate(space.entries):
            if e.group is None:
                continue
            k = keep.get(self.root(e.group))
            if k is not None and not k[e.index]:
                mask[i] = False
        return mask

    # ---- the walk ----------------------------------------------------------------------------

    def _new_group(self, size: int, producer: Producer | None, blocked: str | None = None) -> int:
        gid = len(self.groups)
        self.groups[gid] = Group(gid, size, [producer] if producer else [])
        self._uf.add(gid)
        if blocked:
            self.groups[gid].blocked.append(blocked)
        return gid

    def _block(self, space: Space | None, reason: str) -> None:
        if space is None:
            return
        for g in space.groups():
            grp = self.groups[self.root(g)]
            if reason not in grp.blocked:
                grp.blocked.append(reason)

    def _block_inputs(self, node: ir.Node, reason: str) -> None:
        for v in node.inputs:
            if v is not None and v in self.spaces:
                self._block(self.spaces[v], f"{node.op_type} {node.name!r}: {reason}")

    def _walk(self) -> None:
        for node in self.model.graph:
            handler = getattr(self, f"_op_{node.op_type}", None)
            if node.domain not in ("", "ai.onnx"):
                handler = None
            if handler is None:
                if node.op_type in UNARY_PASSTHROUGH:
                    handler = self._unary
                elif node.op_type in SPATIAL_PASSTHROUGH:
                    handler = self._spatial
                elif node.op_type in BINARY:
                    handler = self._binary
                elif node.op_type in REDUCE:
                    handler = self._reduce
            if handler is None:
                self._block_inputs(node, "op not known to keep channels apart")
                continue
            handler(node)
        for v in self.model.graph.outputs:
            if v in self.spaces:
                self._block(self.spaces[v], f"graph output {v.name!r} keeps its shape")
        for v, space in self.spaces.items():  # read inside an If/Loop body: not analysed
            if any(u.node.graph is not self.model.graph for u in v.uses()):
                self._block(space, f"{v.name!r} is read inside a subgraph")

    # ---- producers / consumers ---------------------------------------------------------------

    def _consume(self, node: ir.Node, x: ir.Value, weight: ir.Value, w_axis: int, x_axis: int):
        """``node`` reads the channels of ``x`` (on ``x_axis``) through ``weight``'s ``w_axis``."""
        space = self.spaces.get(x)
        if space is None:
            return
        why = _private_initializer(weight, node)
        if why is not None:
            self._block(space, f"{node.op_type} {node.name!r}: {why}")
        elif space.axis != x_axis:
            self._block(space, f"{node.op_type} {node.name!r} reduces over another axis")
        else:
            self.slices.append(Slice(weight, w_axis, space, node, "consumer"))

    def _produce(
        self,
        node: ir.Node,
        weight: ir.Value,
        out_axis: int,
        bias: ir.Value | None,
        out_rank: int | None,
        out_ch_axis: int,
        bias_axis: int = 0,
    ) -> None:
        out = node.outputs[0]
        w = _const(weight)
        size = int(w.shape[out_axis])
        reason = _private_initializer(weight, node)
        if reason is None and bias is not None:
            reason = _private_initializer(bias, node)
        if reason is None and out_rank is None:
            reason = f"output {out.name!r} has no static rank"
        prod = Producer(node, weight, out_axis, bias, bias_axis)
        blocked = f"{node.op_type} {node.name!r}: {reason}" if reason else None
        gid = self._new_group(size, prod, blocked)
        self.spaces[out] = Space(out_ch_axis, [Entry(gid, i) for i in range(size)])

    def _op_Conv(self, node: ir.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        wt = _const(w)
        if wt is None:
            self._block_inputs(node, "weight is not a constant")
            return
        group = _int_attr(node, "group", 1)
        out_ch, in_per_group = wt.shape[0], wt.shape[1]
        if group == 1:
            self._consume(node, x, w, 1, 1)
            self._produce(node, w, 0, b, _rank(node.outputs[0]), 1)
            return
        if in_per_group == 1 and out_ch == group:  # depthwise: channel c -> channel c
            space = self.spaces.get(x)
            if space is None:
                return
            why = _private_initializer(w, node) or (
                _private_initializer(b, node) if b is not None else None
            )
            if why:
                self._block(space, f"depthwise Conv {node.name!r}: {why}")
                return
            self.slices.append(Slice(w, 0, space, node, "param"))
            self.slices.append(Slice(None, 0, space, node, "group"))
            if b is not None:
                self.slices.append(Slice(b, 0, space, node, "param"))
            self.spaces[node.outputs[0]] = space
            return
        self._block_inputs(node, f"grouped Conv (group={group}) couples channels")

    def _op_Gemm(self, node: ir.Node) -> None:
        a, w = node.inputs[0], node.inputs[1]
        c = node.inputs[2] if len(node.inputs) > 2 else None
        wt = _const(w)
        if wt is None or _int_attr(node, "transA", 0) or wt.ndim != 2:
            self._block_inputs(node, "weight is not a constant 2-D matrix (or transA=1)")
            return
        trans_b = _int_attr(node, "transB", 0)
        self._consume(node, a, w, 1 if trans_b else 0, 1)
        ct = _const(c)
        if ct is not None and ct.ndim >= 1 and ct.shape[-1] > 1:
            bias = c
        elif ct is not None or c is None:
            bias = None  # scalar / broadcast bias: nothing to slice
        else:
            bias = c  # a computed bias: _private_initializer blocks it
        bias_axis = ct.ndim - 1 if ct is not None else 0
        self._produce(node, w, 0 if trans_b else 1, bias, 2, 1, bias_axis)

    def _op_MatMul(self, node: ir.Node) -> None:
        a, w = node.inputs[0], node.inputs[1]
        wt = _const(w)
        if wt is None or wt.ndim != 2:
            self._block_inputs(node, "a product of two activations (attention) couples channels")
            return
        ra = _rank(a)
        if ra is None:
            self._block_inputs(node, "input has no static rank")
            return
        self._consume(node, a, w, 0, ra - 1)
        self._produce(node, w, 1, None, ra, ra - 1)

    # ---- pass-through ops --------------------------------------------------------------------

    def _unary(self, node: ir.Node) -> None:
        x = node.inputs[0]
        if x not in self.spaces:
            return
        for extra in node.inputs[1:]:  # Clip min/max must be scalars
            if extra is not None and (
                extra in self.spaces or (_const(extra) is not None and _const(extra).size > 1)
            ):
                self._block_inputs(node, "non-scalar extra input")
                return
        self.spaces[node.outputs[0]] = self.spaces[x]

    def _spatial(self, node: ir.Node) -> None:
        x = node.inputs[0]
        if x in self.spaces:
            if self.spaces[x].axis != 1:
                self._block_inputs(node, "pools over the channel axis")
                return
            self.spaces[node.outputs[0]] = self.spaces[x]

    def _op_BatchNormalization(self, node: ir.Node) -> None:
        self._per_channel_params(node, node.inputs[1:5])

    def _op_InstanceNormalization(self, node: ir.Node) -> None:
        self._per_channel_params(node, node.inputs[1:3])

    def _op_LayerNormalization(self, node: ir.Node) -> None:
        """LayerNorm over the channel axis alone (channels-last: ConvNeXt, transformer
        residual streams): per-channel scale and bias are sliced with the channels. The mean
        and variance are then taken over the kept channels: an approximation, like pruning
        itself, which distillation recovers (Torch-Pruning treats LayerNorm the same way)."""
        x = node.inputs[0]
        space = self.spaces.get(x)
        if space is None:
            return
        rank = _rank(x)
        axis = _int_attr(node, "axis", -1)
        if rank is None or axis % rank != rank - 1 or space.axis != rank - 1:
            self._block(space, f"LayerNormalization {node.name!r} normalizes other axes too")
            return
        if any(o is not None and o.uses() for o in node.outputs[1:]):
            self._block(space, f"LayerNormalization {node.name!r}: its mean/variance are used")
            return
        params = [p for p in node.inputs[1:3] if p is not None]
        for p in params:
            why = _private_initializer(p, node)
            if why:
                self._block(space, f"LayerNormalization {node.name!r}: {why}")
                return
        self.slices.extend(Slice(p, 0, space, node, "param") for p in params)
        self.spaces[node.outputs[0]] = space

    def _per_channel_params(self, node: ir.Node, params: Iterable[ir.Value | None]) -> None:
        x = node.inputs[0]
        space = self.spaces.get(x)
        if space is None:
            return
        params = [p for p in params if p is not None]
        for p in params:
            why = _private_initializer(p, node)
            if why:
                self._block(space, f"{node.op_type} {node.name!r}: {why}")
                return
        if space.axis != 1:
            self._block(space, f"{node.op_type} {node.name!r} normalizes another axis")
            return
        self.slices.extend(Slice(p, 0, space, node, "param") for p in params)
        self.spaces[node.outputs[0]] = space

    def _binary(self, node: ir.Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        sa, sb = self.spaces.get(a), self.spaces.get(b)
        if sa is None and sb is None:
            return
        out = node.outputs[0]
        if sa is not None and sb is not None:
            if not self._unify(sa, sb, node):
                return
            self.spaces[out] = sa
            return
        space, other = (sa, b) if sa is not None else (sb, a)
        x = a if sa is not None else b
        rank_x, rank_o = _rank(x), _rank(other)
        if rank_x is None or rank_o is None or _rank(out) != rank_x:
            self._block(space, f"{node.op_type} {node.name!r}: broadcasting changes the rank")
            return
        # Align the other operand's dims from the right with x's channel axis.
        pos = space.axis - (rank_x - rank_o)
        dim = other.shape[pos] if 0 <= pos < rank_o else 1
        if dim == 1:
            self.spaces[out] = space
            return
        if _const(other) is not None and dim == len(space.entries):
            if _private_initializer(other, node) is not None:
                self._block(space, f"{node.op_type} {node.name!r}: per-channel constant shared")
                return
            self.slices.append(Slice(other, pos, space, node, "param"))
            self.spaces[out] = space
            return
        self._block(space, f"{node.op_type} {node.name!r}: operand varies along the channels")

    def _unify(self, sa: Space, sb: Space, node: ir.Node) -> bool:
        why = None
        if sa.axis != sb.axis or len(sa.entries) != len(sb.entries):
            why = "operands' channel axes differ"
        else:
            pairs: dict[int, int] = {}
            for ea, eb in zip(sa.entries, sb.entries, strict=True):
                if (ea.group is None) != (eb.group is None) or ea.index != eb.index:
                    why = "operands' channels do not line up"
                    break
                if ea.group is None:
                    continue
                ga, gb = self.root(ea.group), self.root(eb.group)
                if pairs.setdefault(ga, gb) != gb:
                    why = "operands' channels do not line up"
                    break
        if why:
            self._block(sa, f"{node.op_type} {node.name!r}: {why}")
            self._block(sb, f"{node.op_type} {node.name!r}: {why}")
            return False
        for ga, gb in pairs.items():
            if self.groups[self.root(ga)].size != self.groups[self.root(gb)].size:
                self._block(sa, f"{node.op_type} {node.name!r}: coupled groups differ in size")
                self._block(sb, f"{node.op_type} {node.name!r}: coupled groups differ in size")
                return False
        for ga, gb in pairs.items():
            ra, rb = self.root(ga), self.root(gb)
            if ra != rb:
                merged = self._uf.union(ra, rb)
                other = rb if merged == ra else ra
                tgt = self.groups[merged]
                tgt.blocked.extend(r for r in self.groups[other].blocked if r not in tgt.blocked)
        return True

    def _op_Concat(self, node: ir.Node) -> None:
        ins = [v for v in node.inputs if v is not None]
        if not any(v in self.spaces for v in ins):
            return
        out = node.outputs[0]
        rank = _rank(out)
        axis = _int_attr(node, "axis", 0)
        if rank is None:
            self._block_inputs(node, "output has no static rank")
            return
        axis %= rank
        entries: list[Entry] = []
        for v in ins:
            s = self.spaces.get(v)
            if s is not None and s.axis == axis:
                entries.extend(s.entries)
            elif s is None and v.shape is not None and isinstance(v.shape[axis], int):
                entries.extend(Entry(None, i) for i in range(v.shape[axis]))
            else:
                self._block_inputs(node, "concatenates along a non-channel axis")
                return
        self.spaces[out] = Space(axis, entries)

    def _op_Transpose(self, node: ir.Node) -> None:
        x = node.inputs[0]
        if x not in self.spaces:
            return
        perm = node.attributes.get("perm")
        rank = _rank(x)
        if perm is None or rank is None:
            self._block_inputs(node, "transpose without explicit perm")
            return
        space = self.spaces[x]
        self.spaces[node.outputs[0]] = Space(list(perm.value).index(space.axis), space.entries)

    def _reduce(self, node: ir.Node) -> None:
        x = node.inputs[0]
        if x not in self.spaces:
            return
        space = self.spaces[x]
        rank = _rank(x)
        axes = _const(node.inputs[1]) if len(node.inputs) > 1 else None
        if axes is None and "axes" in node.attributes:
            axes = np.asarray(node.attributes["axes"].value)
        if axes is None or rank is None:
            self._block(space, f"{node.op_type} {node.name!r}: reduces every axis")
            return
        axes = sorted(int(a) % rank for a in np.ravel(axes))
        if axes == [space.axis] and node.op_type == "ReduceMean" and _int_attr(node, "keepdims", 1):
            # A per-position statistic over the channels (ConvNeXt's channels-first LayerNorm,
            # decomposed: mean, variance, normalize): its shape does not depend on how many
            # channels there are, and it is then taken over the kept ones (an approximation,
            # as for LayerNormalization). Its output carries no channels.
            return
        if space.axis in axes:
            self._block(space, f"{node.op_type} {node.name!r}: reduces over the channels")
            return
        keep = _int_attr(node, "keepdims", 1)
        new_axis = space.axis if keep else space.axis - sum(a < space.axis for a in axes)
        self.spaces[node.outputs[0]] = Space(new_axis, space.entries)

    def _flatten_like(self, node: ir.Node, out_axis_ok: bool) -> Space | None:
        x, out = node.inputs[0], node.outputs[0]
        space = self.spaces[x]
        xs, os_ = x.shape, out.shape
        if xs is None or os_ is None:
            self._block(space, f"{node.op_type} {node.name!r}: shapes unknown")
            return None
        tail = list(xs)[space.axis + 1 :]
        if (
            not out_axis_ok
            or len(os_) != space.axis + 1
            or any(d != 1 for d in tail)
            or list(xs)[: space.axis] != list(os_)[: space.axis]
        ):
            self._block(space, f"{node.op_type} {node.name!r}: reshapes the channels")
            return None
        return Space(space.axis, space.entries)

    def _op_Flatten(self, node: ir.Node) -> None:
        x = node.inputs[0]
        if x not in self.spaces:
            return
        ok = _int_attr(node, "axis", 1) == self.spaces[x].axis
        space = self._flatten_like(node, ok)
        if space is not None:
            self.spaces[node.outputs[0]] = space

    def _op_Reshape(self, node: ir.Node) -> None:
        """Only the flatten of (N, C, 1, 1) to (N, C); a hard-coded C is rewritten."""
        x, shape = node.inputs[0], node.inputs[1]
        if x not in self.spaces:
            return
        target = _const(shape)
        space = self._flatten_like(node, target is not None)
        if space is None:
            return
        c = target[space.axis]
        if c == -1:
            pass
        elif c == len(space.entries) and _private_initializer(shape, node) is None:
            self.slices.append(Slice(shape, space.axis, space, node, "shape"))
        else:
            self._block(space, f"Reshape {node.name!r}: target shape is not a private constant")
            return
        self.spaces[node.outputs[0]] = space
