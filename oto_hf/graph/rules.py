"""Per-op rules that move channel labels through an ATen graph.

A rule receives a `RuleContext` for one `call_function` node and returns the label of its output (see `labels.py`).
On the way it ties elements that must be removed together (`ctx.registry.union`), marks elements that can never be
removed (`ctx.poison`) and forbids slicing the output along dims where unlabeled data lives (`ctx.forbid`).

Add a rule for a custom op with `register_op_rule`:

```python
from oto_hf import register_op_rule, rules

register_op_rule(torch.ops.mylib.fused_gelu.default, rules.unary)   # shape-preserving, channel-wise
```
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import fx

from .channels import ChannelRegistry
from .labels import Label, TensorRef, along, labeled_ids, unlabeled, varies_along

aten = torch.ops.aten


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
        rule (`Callable[[RuleContext], Label]`): returns the output label; ready-made rules in this module are
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


# ---- generic rules --------------------------------------------------------------------------------------------------
def unsupported(ctx: RuleContext) -> Label:
    """An op the analysis does not understand: everything flowing into it stays unprunable."""
    for arg in ctx.tensor_args():
        ctx.poison(ctx.label(arg), "unsupported op (add a rule with oto_hf.register_op_rule)")
    return None


def unary(ctx: RuleContext) -> Label:
    """Shape-preserving, channel-wise op on its first tensor input (activations, casts, dropout, scalar math)."""
    return ctx.label(ctx.tensor_args()[0])


def elementwise(ctx: RuleContext) -> Label:
    """Broadcasting n-ary op (add, mul, where, ...): aligned channels are tied together."""
    out_shape = ctx.out_shape
    args = ctx.tensor_args()
    labels = [ctx.label(a) for a in args]
    refs = [(label, ctx.shape(a)) for a, label in zip(args, labels) if isinstance(label, TensorRef)]
    plain = [ctx.shape(a) for a, label in zip(args, labels) if label is None]
    dense = [label for label in labels if isinstance(label, torch.Tensor)]
    rank = len(out_shape)

    if not dense:
        if not refs:
            return None
        if len(refs) == 1:
            ref, shape = refs[0]
            extents = {d for s in plain for d, n in _aligned(s, rank) if n > 1}
            clash = [d for d, _ in _aligned(shape, rank) if d in extents and out_shape[d] > 1]
            if not clash:
                return _broadcast_ref(ref, shape, out_shape)
            ctx.poison(ref, "combined with unprunable data along its channels")
            return None
        for ref, _ in refs:
            ctx.poison(ref, "combined with another parameter")
        return None

    out = unlabeled(out_shape)
    for label in dense:
        expanded = (
            label.expand(out_shape)
            if label.dim() == rank
            else label.reshape((1,) * (rank - label.dim()) + tuple(label.shape)).expand(out_shape)
        )
        ctx.registry.union(out, expanded)
        out = torch.where(out >= 0, out, expanded)
    for shape in plain:
        for d, n in _aligned(shape, rank):
            if n > 1:
                ctx.forbid(d)
    for ref, shape in refs:
        offset = rank - len(shape)
        shared = _shared(out, ref, offset)  # each entry meets several channels (e.g. one norm weight for all heads)
        for i in ref.channel_dims():
            d = i + offset
            if varies_along(out, d):
                ctx.registry.union_along(out, d, ref.elements(ctx.registry, i), shared=shared)
            else:
                ctx.forbid(d)
                ctx.registry.poison(ref.elements(ctx.registry, i), f"a dimension that carries no channel: {ctx.where}")
    return out


def movement(ctx: RuleContext) -> Label:
    """Pure data movement (view, permute, slice, cat, ...): replay the op on the labels."""
    args = ctx.tensor_args()
    labels = [ctx.label(a) for a in args]
    if all(label is None for label in labels):
        return None
    if len(args) == 1 and isinstance(labels[0], TensorRef):
        ref = _move_ref(ctx, labels[0])
        if ref is not None:
            return ref
    replaced = {a: ctx.dense(a) for a in args}
    call_args = fx.node.map_arg(ctx.node.args, lambda n: replaced.get(n, n))
    call_kwargs = fx.node.map_arg(ctx.node.kwargs, lambda n: replaced.get(n, n))
    target = ctx.node.target
    if target in (aten.view.default, aten._unsafe_view.default):
        # Labels need not share the strides of the values they describe (e.g. after `contiguous`): reshape them.
        target = aten.reshape.default
    result = target(*call_args, **call_kwargs)
    if isinstance(result, (list, tuple)):
        return tuple(r.clone() if isinstance(r, torch.Tensor) else None for r in result)
    return result.clone()


def pad(ctx: RuleContext) -> Label:
    """Constant padding adds entries that carry no channel; other modes copy entries, fine along plain dims only."""
    source = ctx.node.args[0]
    if ctx.label(source) is None:
        return None
    dense, widths = ctx.dense(source), ctx.node.args[1]
    if ctx.argument("mode", "constant") == "constant":
        return aten.constant_pad_nd.default(dense, widths, -1)
    padded = [dense.dim() - 1 - i // 2 for i in range(len(widths)) if widths[i]]
    if any(varies_along(dense, d) for d in padded):
        ctx.poison(dense, "padding that copies channels")
        return None
    for d in set(padded):
        dense = dense.narrow(d, 0, 1)
    return dense.expand(ctx.out_shape).clone()


def like(ctx: RuleContext) -> Label:
    """`zeros_like` and friends follow their input's shape, so they follow its channels."""
    label = ctx.label(ctx.tensor_args()[0])
    return ctx.dense(ctx.tensor_args()[0]) if label is not None else None


def indexing(ctx: RuleContext) -> Label:
    """Indexing by data (index, gather, index_select): fine where the indexed dims carry no channel.

    The other dims keep their channels, so a parameter table looked up by a position index (a relative-position
    bias of shape `(positions, heads)`) follows the heads. The op is replayed on the labels with zero indices.
    """
    source = ctx.node.args[0]
    label = ctx.label(source)
    if label is None:
        return None
    shape = ctx.shape(source)
    indexed = _indexed_dims(ctx, len(shape))
    if isinstance(label, TensorRef):
        dims = [d for d in label.channel_dims() if d not in indexed]
        if len(dims) > 1 or any(d is None for d in label.dims):
            ctx.poison(label, "indexed parameter with several channel dimensions")
            return None
        dense = along(label.elements(ctx.registry, dims[0]), dims[0], shape) if dims else unlabeled(shape)
    else:
        dense = ctx.dense(source)
    if indexed is None or any(varies_along(dense, d) for d in indexed):
        ctx.poison(dense, "indexed by data along a channel dimension")
        return None

    def zeros(node: fx.Node) -> Any:
        value = node.meta.get("val")
        if node is source:
            return dense
        if isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dtype != torch.bool:
            return torch.zeros(tuple(value.shape), dtype=torch.long)
        return node

    try:
        result = ctx.node.target(*fx.node.map_arg(ctx.node.args, zeros), **fx.node.map_arg(ctx.node.kwargs, zeros))
    except Exception:  # e.g. boolean masks: the output shape depends on the data
        result = None
    if not isinstance(result, torch.Tensor) or tuple(result.shape) != ctx.out_shape:
        ctx.poison(dense, "indexed by data")
        return None
    return result.clone()


def _indexed_dims(ctx: RuleContext, rank: int) -> list[int] | None:
    """The dims an indexing op selects along by data (None if unknown)."""
    packet = getattr(ctx.node.target, "overloadpacket", None)
    if packet is aten.index:
        return [d for d, index in enumerate(ctx.node.args[1]) if index is not None]
    dim = ctx.argument("dim")
    return [dim % max(rank, 1)] if isinstance(dim, int) else None


def reduction(ctx: RuleContext) -> Label:
    """Reductions (mean, sum, amax, var, norm ...) over a channel dim mix channels: they stay unprunable."""
    source = ctx.tensor_args()[0]
    if ctx.label(source) is None:
        return None
    dense = ctx.dense(source)
    dims = ctx.argument("dim")
    dims = (
        list(range(dense.dim())) if dims is None or dims == [] else ([dims] if isinstance(dims, int) else list(dims))
    )
    dims = sorted(d % max(dense.dim(), 1) for d in dims)
    if any(varies_along(dense, d) for d in dims):
        dense = tie_reduced(ctx, dense, dims, "reduction over a channel dimension")
    reduced = dense
    for d in dims:
        reduced = reduced.narrow(d, 0, 1)
    if not ctx.argument("keepdim", False):
        for d in reversed(dims):
            reduced = reduced.squeeze(d)
    if tuple(reduced.shape) != ctx.out_shape:
        if isinstance(ctx.node.meta.get("val"), (tuple, list)):
            return (reduced, None)
        return unsupported(ctx)
    return reduced


def along_dim_mixing(ctx: RuleContext) -> Label:
    """Shape-preserving ops that mix entries along one dim (softmax, cumsum)."""
    source = ctx.tensor_args()[0]
    if ctx.label(source) is None:
        return None
    dense = ctx.dense(source)
    if varies_along(dense, ctx.argument("dim") % dense.dim()):
        ctx.poison(dense, "softmax/cumulative op over a channel dimension")
    return dense


def spatial(ctx: RuleContext) -> Label:
    """Pooling and resizing over dims >= 2 of a channels-first tensor: channels pass through."""
    source = ctx.tensor_args()[0]
    if ctx.label(source) is None:
        return None
    dense = ctx.dense(source)
    if any(varies_along(dense, d) for d in range(2, dense.dim())):
        ctx.poison(dense, "pooling over a channel dimension")
        return None
    value = ctx.node.meta.get("val")
    first = value[0] if isinstance(value, (tuple, list)) else value
    reduced = dense
    for d in range(2, dense.dim()):
        reduced = reduced.narrow(d, 0, 1)
    result = reduced.expand(tuple(first.shape)).clone()
    if isinstance(value, (tuple, list)):
        return (result,) + (None,) * (len(value) - 1)
    return result


# ---- producers and consumers -------------------------------------------------------------------------------------
def _consume(
    ctx: RuleContext, x: Label, x_shape: tuple[int, ...], dim: int, weight: TensorRef, weight_dim: int
) -> None:
    """Slices of `weight` along `weight_dim` read entry i of `x` along `dim` (nothing to tie if `x` has no channel).

    A buffer read as data (e.g. a table of relative coordinates) is a constant input, not a channel: models rebuild
    such buffers from their config.
    """
    if x is None or (isinstance(x, TensorRef) and x.is_buffer):
        return
    dense = ctx.densify(x, x_shape)
    ids = weight.elements(ctx.registry, weight_dim)
    ctx.registry.union_along(dense, dim, ids)
    other = tuple(d for d in range(dense.dim()) if d != dim % dense.dim())
    reads_plain_data = (dense < 0).amax(dim=other) if other else dense < 0
    ctx.registry.poison(ids[reads_plain_data], f"reads data that carries no prunable channel: {ctx.where}")


def _weighted(ctx: RuleContext, x_arg: Any, weight: TensorRef, in_dim: int, out_dim: int, bias_arg: Any) -> Label:
    """`y[..., o] = sum_i x[..., i] * W[o, i] + b[o]` with `W`'s dims `out_dim`, `in_dim`."""
    if any(d is None for d in weight.dims):
        ctx.poison(weight, "weight with broadcast dimensions")
        return None
    x_shape = ctx.shape(x_arg)
    _consume(ctx, ctx.label(x_arg), x_shape, len(x_shape) - 1, weight, in_dim)
    out_ids = weight.elements(ctx.registry, out_dim)
    bias = ctx.label(bias_arg)
    if isinstance(bias, TensorRef) and len(bias.channel_dims()) == 1:
        ctx.registry.union(out_ids, bias.elements(ctx.registry, bias.channel_dims()[0]))
    elif bias is not None:
        ctx.poison(bias, "unexpected bias")
    return along(out_ids, len(ctx.out_shape) - 1, ctx.out_shape)


def linear(ctx: RuleContext) -> Label:
    x, weight, bias = ctx.node.args[0], ctx.node.args[1], ctx.argument("bias")
    ref = ctx.label(weight)
    if isinstance(ref, TensorRef) and len(ref.shape) == 2:
        return _weighted(ctx, x, ref, in_dim=1, out_dim=0, bias_arg=bias)
    return unsupported(ctx)


def addmm(ctx: RuleContext) -> Label:
    bias, x, weight = ctx.node.args[0], ctx.node.args[1], ctx.node.args[2]
    ref = ctx.label(weight)
    if isinstance(ref, TensorRef) and len(ref.shape) == 2:
        return _weighted(ctx, x, ref, in_dim=0, out_dim=1, bias_arg=bias)
    return unsupported(ctx)


def matmul(ctx: RuleContext) -> Label:
    """Matrix products: a parameter operand is a weight; two activations contract (as in attention)."""
    a, b = ctx.node.args[0], ctx.node.args[1]
    la, lb = ctx.label(a), ctx.label(b)
    if la is None and lb is None:
        return None
    if isinstance(lb, TensorRef) and len(lb.shape) == 2 and not isinstance(la, TensorRef):
        return _weighted(ctx, a, lb, in_dim=0, out_dim=1, bias_arg=None)
    if isinstance(la, TensorRef) or isinstance(lb, TensorRef):
        return unsupported(ctx)
    dense_a, dense_b = ctx.dense(a), ctx.dense(b)
    for label in (dense_a, dense_b):  # two activations contracted: attention scores or their use (eager attention)
        ctx.registry.mark_attention(label)
    return contract(ctx, dense_a, dense_b, ctx.out_shape)


def contract(ctx: RuleContext, a: torch.Tensor, b: torch.Tensor, out_shape: tuple[int, ...]) -> torch.Tensor:
    """Labels of `a @ b` for activations `a` [..., M, K] and `b` [..., K, N].

    Everything contracted into one output entry is tied: a row of `a`, a column of `b`, and the two with each other.
    This is what makes the query/key/value channels of one attention head a single group.
    """
    if a.dim() == 1:
        a = a.unsqueeze(0)
    if b.dim() == 1:
        b = b.unsqueeze(-1)
    a_k, b_k = a.amax(dim=tuple(range(a.dim() - 1))), b.amax(dim=tuple(d for d in range(b.dim()) if d != b.dim() - 2))
    mismatch = (a_k >= 0) != (b_k >= 0)
    if mismatch.any():
        ctx.registry.poison(
            torch.cat([a_k[mismatch], b_k[mismatch]]), f"contraction with unprunable data: {ctx.where}"
        )
    rows, cols = a.amax(dim=-1), b.amax(dim=-2)  # one representative per row / column
    ctx.registry.union(a, rows.unsqueeze(-1))
    ctx.registry.union(b, cols.unsqueeze(-2))
    rows_b, cols_b = rows.unsqueeze(-1), cols.unsqueeze(-2)
    ctx.registry.union(rows_b, cols_b)
    out = torch.where(rows_b >= 0, rows_b, cols_b)
    return out.expand(out_shape).clone() if out.numel() != 1 or out_shape else out.reshape(out_shape)


def attention(ctx: RuleContext) -> Label:
    """`scaled_dot_product_attention(q, k, v, ...)`: softmax(q k^T) v, with grouped-query repetition."""
    q, k, v = (ctx.node.args[i] for i in range(3))
    if all(ctx.label(x) is None for x in (q, k, v)):
        return None
    lq, lk, lv = ctx.dense(q), ctx.dense(k), ctx.dense(v)
    if lq.dim() >= 3 and lk.shape[-3] != lq.shape[-3]:  # grouped-query attention with enable_gqa=True
        repeats = lq.shape[-3] // lk.shape[-3]
        lk, lv = lk.repeat_interleave(repeats, dim=-3), lv.repeat_interleave(repeats, dim=-3)
    scores_shape = tuple(lq.shape[:-1]) + (lk.shape[-2],)
    scores = contract(ctx, lq, lk.transpose(-2, -1), scores_shape)
    mask = ctx.argument("attn_mask")
    if isinstance(mask, fx.Node):
        mask_shape = ctx.shape(mask)
        if ctx.label(mask) is not None:  # a per-head bias (e.g. relative positions): it belongs to its head
            ctx.registry.union(scores, _aligned_label(ctx.dense(mask), len(scores_shape)))
        elif len(mask_shape) >= 3 and mask_shape[-3] > 1 and scores.dim() >= 3:
            ctx.poison(scores, "per-head attention bias that no head owns")
    out = contract(ctx, scores, lv, ctx.out_shape)
    for label in (lq, lk, lv):
        ctx.registry.mark_attention(label)
    return out


def convolution(ctx: RuleContext) -> Label:
    x, weight, bias = ctx.node.args[0], ctx.node.args[1], ctx.argument("bias")
    ref = ctx.label(weight)
    groups = ctx.argument("groups", 1)
    if not isinstance(ref, TensorRef) or ctx.argument("transposed", False) or any(d is None for d in ref.dims):
        return unsupported(ctx)
    x_label, x_shape = ctx.label(x), ctx.shape(x)
    out_ids = ref.elements(ctx.registry, 0)
    bias_ref = ctx.label(bias)
    if isinstance(bias_ref, TensorRef):
        ctx.registry.union(out_ids, bias_ref.elements(ctx.registry, 0))
    out = along(out_ids, 1, ctx.out_shape)
    if groups == 1:
        _consume(ctx, x_label, x_shape, 1, ref, 1)
    elif groups == x_shape[1] == ref.shape[0] and ref.shape[1] == 1:  # depthwise: channel c in, channel c out
        if x_label is None:
            ctx.poison(out, "depthwise convolution of an unprunable input")
        else:
            _consume(ctx, x_label, x_shape, 1, ref, 0)
    else:
        ctx.poison(out, "grouped convolution")
        ctx.poison(x_label, "grouped convolution")
    return out


def embedding(ctx: RuleContext) -> Label:
    ref = ctx.label(ctx.node.args[0])
    if not isinstance(ref, TensorRef) or len(ref.shape) != 2:
        return unsupported(ctx)
    return along(ref.elements(ctx.registry, 1), len(ctx.out_shape) - 1, ctx.out_shape)


def per_channel_norm(ctx: RuleContext) -> Label:
    """BatchNorm / InstanceNorm: affine parameters and running statistics follow channel dim 1."""
    x = ctx.node.args[0]
    label = ctx.label(x)
    refs = [ctx.label(a) for a in ctx.tensor_args()[1:]]
    value = ctx.node.meta.get("val")
    extra = (None,) * (len(value) - 1) if isinstance(value, (tuple, list)) else ()
    if label is None:
        for ref in refs:
            if isinstance(ref, TensorRef):
                ctx.registry.poison(ref.all_elements(ctx.registry), f"normalises an unprunable input: {ctx.where}")
        return (None,) + extra if extra else None
    dense = ctx.dense(x)
    for ref in refs:
        if isinstance(ref, TensorRef) and ref.channel_dims():
            ctx.registry.union_along(dense, 1, ref.elements(ctx.registry, ref.channel_dims()[0]))
    return (dense,) + extra if extra else dense


def group_norm(ctx: RuleContext) -> Label:
    x = ctx.node.args[0]
    num_groups = ctx.node.args[1]
    if ctx.label(x) is not None and num_groups == ctx.shape(x)[1]:
        return per_channel_norm(ctx)
    return layer_norm(ctx, normalised_dims=None)


def layer_norm(ctx: RuleContext, normalised_dims: list[int] | None = None) -> Label:
    """LayerNorm / RMSNorm / GroupNorm mix every channel they normalise: those stay unprunable."""
    x = ctx.node.args[0]
    value = ctx.node.meta.get("val")
    extra = (None,) * (len(value) - 1) if isinstance(value, (tuple, list)) else ()
    dense = ctx.dense(x) if ctx.label(x) is not None else unlabeled(ctx.shape(x))
    for ref in (ctx.label(a) for a in ctx.tensor_args()[1:]):
        if not isinstance(ref, TensorRef):
            continue
        offset = dense.dim() - len(ref.shape)
        for i in ref.channel_dims():  # affine parameters join the channels they scale
            d = offset + i if normalised_dims is not None else 1
            shared = normalised_dims is not None and _shared(dense, ref, offset)  # a per-head norm's parameters
            if varies_along(dense, d):
                ctx.registry.union_along(dense, d, ref.elements(ctx.registry, i), shared=shared)
            else:
                ctx.registry.poison(ref.elements(ctx.registry, i), f"normalisation parameters: {ctx.where}")
    if ctx.label(x) is None:
        return (None,) + extra if extra else None
    if normalised_dims is None:
        normalised_dims = list(range(1, dense.dim()))
    normalised_dims = sorted(d % dense.dim() for d in normalised_dims)
    if any(varies_along(dense, d) for d in normalised_dims):
        dense = tie_reduced(ctx, dense, normalised_dims, "normalisation over a channel dimension")
    return (dense,) + extra if extra else dense


def tie_reduced(ctx: RuleContext, dense: torch.Tensor, dims: list[int], why: str) -> torch.Tensor:
    """Entries reduced together (a norm's statistics) must be removed together: tie each reduced slice.

    This keeps per-head norms (QK-norm over `head_dim`) prunable by whole heads: the slices are heads, and removing
    one leaves the statistics of the others unchanged. A reduction over every channel of the tensor (LayerNorm over
    the hidden size), or over channels mixed with plain data, leaves its channels unprunable instead.
    """
    high = dense.amax(dim=dims, keepdim=True)
    low = dense.amin(dim=dims, keepdim=True)
    if bool((low < 0).logical_and(high >= 0).any()) or not any(varies_along(high, d) for d in range(high.dim())):
        ctx.poison(dense, why)
        return dense
    ctx.registry.union(dense, high)
    return high.expand_as(dense).clone()


def _layer_norm(ctx: RuleContext) -> Label:
    count = len(ctx.node.args[1])
    return layer_norm(ctx, normalised_dims=list(range(-count, 0)))


def no_output(ctx: RuleContext) -> Label:
    """Runtime checks such as `_assert_tensor_metadata`: nothing flows through them."""
    return None


def getitem(ctx: RuleContext) -> Label:
    label = ctx.label(ctx.node.args[0])
    return label[ctx.node.args[1]] if isinstance(label, tuple) else None


# ---- helpers -------------------------------------------------------------------------------------------------------
def _aligned(shape: tuple[int, ...], rank: int) -> Iterator[tuple[int, int]]:
    offset = rank - len(shape)
    return ((i + offset, n) for i, n in enumerate(shape))


def _aligned_label(label: torch.Tensor, rank: int) -> torch.Tensor:
    return label.reshape((1,) * (rank - label.dim()) + tuple(label.shape))


def _shared(label: torch.Tensor, ref: TensorRef, offset: int) -> bool:
    """Whether the parameter `ref` (aligned at `offset`) is broadcast along a dim where `label`'s channels vary.

    Such a parameter serves several channels with each entry: removing one of them must keep it whole. Only dims
    that carry channels matter: a conv bias broadcast over pixels is not shared.
    """
    if not ref.channel_dims():
        return False
    for d in range(label.dim()):
        i = d - offset
        broadcast = i < 0 or ref.dims[i] is None or ref.shape[i] == 1
        if broadcast and varies_along(label, d):
            return True
    return False


def _broadcast_ref(ref: TensorRef, shape: tuple[int, ...], out_shape: tuple[int, ...]) -> TensorRef:
    offset = len(out_shape) - len(shape)
    dims: list[int | None] = [None] * offset + list(ref.dims)
    for i, (n, m) in enumerate(zip(shape, out_shape[offset:])):
        if n != m:
            dims[i + offset] = None
    return ref.with_dims(out_shape, tuple(dims))


def _move_ref(ctx: RuleContext, ref: TensorRef) -> TensorRef | None:
    """Dimension-only ops on a parameter keep it a reference; anything else returns None."""
    target, out_shape = ctx.node.target, ctx.out_shape
    packet = getattr(target, "overloadpacket", None)
    dims = list(ref.dims)
    if packet in (aten.t, aten.transpose, aten.swapaxes):
        d0, d1 = (0, 1) if packet is aten.t else (ctx.node.args[1], ctx.node.args[2])
        d0, d1 = d0 % len(dims), d1 % len(dims)
        dims[d0], dims[d1] = dims[d1], dims[d0]
        return ref.with_dims(out_shape, tuple(dims))
    if packet is aten.permute:
        return ref.with_dims(out_shape, tuple(dims[d % len(dims)] for d in ctx.node.args[1]))
    if packet is aten.numpy_T:  # `weight.T`: all dims reversed
        return ref.with_dims(out_shape, tuple(reversed(dims)))
    if packet in (
        aten.expand,
        aten.view,
        aten.reshape,
        aten._unsafe_view,
        aten.unsqueeze,
        aten.squeeze,
        aten.broadcast_to,
    ):
        kept = [(d, n) for d, n in zip(dims, ref.shape) if n != 1]
        if packet in (aten.expand, aten.broadcast_to):
            return _broadcast_ref(ref, ref.shape, out_shape)
        if [n for n in out_shape if n != 1] == [n for _, n in kept]:
            it = iter(kept)
            return ref.with_dims(out_shape, tuple(next(it)[0] if n != 1 else None for n in out_shape))
    return None


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


# ---- the default table ----------------------------------------------------------------------------------------------
_UNARY = (
    "gelu relu relu_ silu silu_ tanh sigmoid dropout neg abs exp log sqrt rsqrt erf sin cos square hardtanh hardtanh_ "
    "hardswish hardsigmoid leaky_relu elu mish softplus clamp clamp_min clamp_max sign logical_not bitwise_not "
    "to _to_copy clone contiguous alias detach lift_fresh_copy type_as pow reciprocal feature_dropout alpha_dropout "
    "native_dropout gelu_ tanh_ sigmoid_ dropout_ relu6 celu selu erfinv trunc floor ceil round frac "
    "isnan isinf nan_to_num"
)
_ELEMENTWISE = (
    "add add_ sub sub_ mul mul_ div div_ rsub where maximum minimum masked_fill masked_fill_ eq ne lt gt le ge "
    "logical_and logical_or logical_xor bitwise_and bitwise_or __and__ __or__ atan2 fmod remainder copysign lerp "
    "addcmul addcdiv floor_divide"
)
_MOVEMENT = (
    "view reshape _unsafe_view transpose t numpy_T permute unsqueeze squeeze expand expand_as broadcast_to flatten "
    "unflatten slice select split split_with_sizes chunk unbind cat concat stack narrow repeat movedim swapaxes flip "
    "roll view_as reshape_as tensor_split unfold"
)
_REDUCTION = "mean sum amax amin max min var std logsumexp norm linalg_vector_norm prod any all argmax argmin"
_SPATIAL = (
    "max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d "
    "adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d max_pool2d_with_indices _adaptive_avg_pool2d "
    "upsample_nearest2d upsample_bilinear2d upsample_nearest1d upsample_bicubic2d"
)


def _register_defaults() -> None:
    table: list[tuple[str, OpRule]] = [
        (_UNARY, unary),
        (_ELEMENTWISE, elementwise),
        (_MOVEMENT, movement),
        (_REDUCTION, reduction),
        (_SPATIAL, spatial),
        ("_softmax softmax log_softmax _log_softmax cumsum cumprod logcumsumexp", along_dim_mixing),
        ("zeros_like ones_like full_like empty_like rand_like randn_like", like),
        ("index index_select gather take_along_dim", indexing),
        ("constant_pad_nd pad", pad),
        ("linear", linear),
        ("addmm", addmm),
        ("mm matmul bmm", matmul),
        ("conv1d conv2d conv3d convolution", convolution),
        ("embedding", embedding),
        (
            "batch_norm _native_batch_norm_legit_no_training _native_batch_norm_legit native_batch_norm instance_norm",
            per_channel_norm,
        ),
        ("layer_norm native_layer_norm rms_norm _fused_rms_norm", _layer_norm),
        ("group_norm native_group_norm", group_norm),
        ("scaled_dot_product_attention", attention),
        ("_assert_tensor_metadata _assert_scalar sym_constrain_range_for_size", no_output),
    ]
    for names, rule in table:
        for name in names.split():
            packet = getattr(aten, name, None)
            if packet is not None:
                _RULES[packet] = rule
    import operator

    _RULES[operator.getitem] = getitem


_register_defaults()
