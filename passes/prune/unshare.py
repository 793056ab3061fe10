"""Small per-channel constants that several nodes read get a copy per node before channel
pruning (an exporter deduplicates equal constants: two blocks' layer scales that are still
equal, LayerNorms' ones and zeros), so each is sliced with its own node's channels.
"""

from __future__ import annotations

import onnx_ir as ir

from robopt_compile.passes.prune.groups import WEIGHTED

UNSHARE_MAX_ELEMENTS = 1 << 16
Unshared = list[tuple[ir.Node, int, ir.Value, ir.Value]]  # (node, input index, shared, copy)


def unshare_small_initializers(model: ir.Model) -> Unshared:
    """Give each node its own copy of a small per-channel constant several nodes read (an
    exporter deduplicates equal constants: two blocks' layer scales that are still equal,
    LayerNorms' ones), so each can be sliced with its own channels; the values, and so the
    model's outputs, are unchanged. A weight of a Conv, Gemm or MatMul shared by several
    nodes is tied on purpose and stays shared (its group is blocked). Returns what was done,
    for :func:`reshare`."""
    done: Unshared = []
    for value in list(model.graph.initializers.values()):
        t = value.const_value
        uses = list(value.uses())
        if t is None or len(uses) < 2 or t.size > UNSHARE_MAX_ELEMENTS or value.is_graph_input():
            continue
        if any(n.op_type in WEIGHTED and i > 0 for n, i in uses) or any(
            n.graph is not model.graph for n, _ in uses
        ):
            continue
        array = t.numpy()
        for k, (node, idx) in enumerate(uses[1:], 1):
            name = f"{value.name}__{k}"
            copy = ir.Value(name=name, shape=value.shape, type=value.type,
                            const_value=ir.tensor(array.copy(), name=name))  # fmt: skip
            model.graph.register_initializer(copy)
            node.replace_input_with(idx, copy)
            done.append((node, idx, value, copy))
    return done


def reshare(model: ir.Model, done: Unshared) -> None:
    """Undo :func:`unshare_small_initializers` (a pass that then fails leaves the model as it
    found it)."""
    for node, idx, value, copy in reversed(done):
        node.replace_input_with(idx, value)
        model.graph.initializers.pop(copy.name, None)
