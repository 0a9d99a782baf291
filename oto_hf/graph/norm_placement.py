"""Where a model normalises its residual stream, read from the traced graph.

*Post-norm* models (BERT and its descendants: `LayerNorm(x + f(x))`) normalise the sum of every residual branch, so
the stream never carries on past an add un-normalised. *Pre-norm* models (LLaMA, GPT-2: `x + f(norm(x))`) normalise
inside the branches and the stream runs on from each add. The saliency `"auto"` picks from this
(`optim.readers.choose_saliency`): behind a norm, the loss gradient at a branch's output has nothing along what the
norm removes, which `"output"` cannot see and `"kfac"` can.
"""

from __future__ import annotations

import torch
from torch import fx
from torch.export import ExportedProgram

from .operators import _Graph, _residual_branches

aten = torch.ops.aten
NORM_OPS = {aten.layer_norm.default, aten.native_layer_norm.default, aten.rms_norm.default}


def _first_consumers(graph: _Graph, node: fx.Node) -> set[fx.Node]:
    """The nodes that use `node`'s value, looking through its aliases (casts, copies, eval-mode dropout)."""
    found, stack = set(), [node]
    while stack:
        for user in stack.pop().users:
            if graph.canonical.get(user) is node:
                stack.append(user)
            else:
                found.add(user)
    return found


def is_post_norm(program: ExportedProgram) -> bool:
    """Whether the add of every residual branch that holds weights (not `x + 0.044715 x^3` inside a GELU) feeds a
    normalisation and nothing else; a model without such branches is not post-norm."""
    graph = _Graph(program)
    adds = {
        branch.root
        for branch in _residual_branches(graph)
        if any(arg in graph.tensor_of for node in branch.nodes for arg in node.all_input_nodes)
    }
    return bool(adds) and all(
        (consumers := _first_consumers(graph, add)) and all(c.target in NORM_OPS for c in consumers) for add in adds
    )
