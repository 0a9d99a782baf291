"""The extension API of channel propagation: what a rule sees (`RuleContext`) and the table of rules by op.

A rule receives a `RuleContext` for one `call_function` node and returns the label of its output (see `labels.py`).
On the way it ties elements that must be removed together (`ctx.registry.union`), marks elements that can never be
removed (`ctx.poison`) and forbids slicing the output along dims where unlabeled data lives (`ctx.forbid`).

Add a rule for a custom op with `register_op_rule`:

```python
from oto_hf import register_op_rule, rules

register_op_rule(torch.ops.mylib.fused_gelu.default, rules.unary)   # shape-preserving, channel-wise
```

The ready-made rules and the default table live in `rules.py` and `layer_rules.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import fx

from .channels import ChannelRegistry
from .labels import Label, TensorRef, along, labeled_ids, unlabeled


class RuleContext:
    """What a rule sees: the node, the labels of its inputs and the registry."""

    def __init__(
        self, node: fx.Node, labels: dict[fx.Node, Label], registry: ChannelRegistry, forbidden: set[int]
    ) -> None:
        self.node = node
        self.registry = registry
        self._labels = labels
        self.forbidden = forbidden

    # ---- inputs -------------------------------------------------------------------------------------------------
    def argument(self, name: str, default: Any = None) -> Any:
        """An argument of the op by its schema name (positional or keyword)."""
        # Private: `OpOverload._schema` (checked against torch 2.13, pinned by tests/test_private_apis.py).
        schema = getattr(self.node.target, "_schema", None)
        if name in self.node.kwargs:
            return self.node.kwargs[name]
        if schema is not None:
            for index, argument in enumerate(schema.arguments):
                if argument.name == name:
                    if index < len(self.node.args):
                        return self.node.args[index]
                    if argument.has_default_value():
                        return argument.default_value
        return default

    def label(self, arg: Any) -> Label:
        return self._labels.get(arg) if isinstance(arg, fx.Node) else None

    @staticmethod
    def shape(arg: Any) -> tuple[int, ...]:
        value = arg.meta.get("val") if isinstance(arg, fx.Node) else None
        return tuple(int(s) for s in value.shape) if isinstance(value, torch.Tensor) else ()

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.shape(self.node)

    def tensor_args(self) -> list[fx.Node]:
        """The tensor-valued inputs, positional then keyword, lists flattened."""
        found: list[fx.Node] = []
        for arg in _flatten((self.node.args, self.node.kwargs)):
            if isinstance(arg, fx.Node) and isinstance(arg.meta.get("val"), torch.Tensor):
                found.append(arg)
        return found

    def dense(self, arg: Any) -> torch.Tensor:
        """The label of `arg` as a dense tensor; a parameter reference becomes labels along its channel dim."""
        return self.densify(self.label(arg), self.shape(arg))

    def densify(self, label: Label, shape: tuple[int, ...]) -> torch.Tensor:
        """`label` as a dense tensor of `shape` (a reference with several channel dims cannot be: it is poisoned)."""
        if isinstance(label, torch.Tensor):
            return label
        if isinstance(label, TensorRef):
            dims = label.channel_dims()
            if len(dims) == 1:
                return along(label.elements(self.registry, dims[0]), dims[0], shape)
            if dims:
                self.poison(label, "used by an op that mixes several of its dimensions")
        return unlabeled(shape)

    # ---- effects ------------------------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        path = module_path(self.node)
        return f"{_op_name(self.node.target)} at node '{self.node.name}'" + (f" in module '{path}'" if path else "")

    def poison(self, label: Label, why: str) -> None:
        """Make every element in `label` unprunable, saying why."""
        if isinstance(label, TensorRef):
            ids = label.all_elements(self.registry)
        elif isinstance(label, tuple):
            for item in label:
                self.poison(item, why)
            return
        else:
            ids = labeled_ids(label)
        self.registry.poison(ids, f"{why}: {self.where}")

    def forbid(self, dim: int) -> None:
        """The output must not be sliced along `dim` (unlabeled data of full extent lives there)."""
        self.forbidden.add(dim % max(len(self.out_shape), 1))


OpRule = Callable[[RuleContext], Label]
_RULES: dict[Any, OpRule] = {}


def register_op_rule(op: Any, rule: OpRule) -> None:
    """Register how channel labels pass through `op` (an `OpOverload`, an `OpOverloadPacket` or any call target).

    Args:
        op: the call target as it appears in `torch.export` graphs, e.g. `torch.ops.mylib.my_op.default`.
        rule (`Callable[[RuleContext], Label]`): returns the output label; ready-made rules in `oto_hf.rules` are
            `unary` (channel-wise, shape preserving), `elementwise` (broadcasting n-ary), `movement` (pure data
            movement: the op is replayed on the labels) and `unsupported` (everything it touches stays unprunable).
    """
    if not callable(rule):
        raise TypeError(f"`rule` must be callable, got {type(rule).__name__}.")
    _RULES[op] = rule


def rule_for(target: Any) -> OpRule | None:
    rule = _RULES.get(target)
    if rule is None and hasattr(target, "overloadpacket"):
        rule = _RULES.get(target.overloadpacket)
    return rule


# ---- the fallback rule ---------------------------------------------------------------------------------------------
def unsupported(ctx: RuleContext) -> Label:
    """An op the analysis does not understand: everything flowing into it stays unprunable."""
    for arg in ctx.tensor_args():
        ctx.poison(ctx.label(arg), "unsupported op (add a rule with oto_hf.register_op_rule)")
    return None


# ---- helpers -------------------------------------------------------------------------------------------------------
def _flatten(value: Any) -> Iterable[Any]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flatten(item)
    else:
        yield value


def _op_name(target: Any) -> str:
    return str(target) if hasattr(target, "_schema") else getattr(target, "__name__", str(target))


def module_path(node: fx.Node) -> str:
    """The innermost module a graph node comes from, e.g. `encoder.layer.0.attention.self`."""
    # `nn_module_stack` entries are (path, type), innermost last (torch 2.13, pinned by tests/test_private_apis.py).
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path).replace("L['self'].", "").replace("L__self__.", "")
