"""The rules of shape-only ops (elementwise, movement, reshape, reductions, ...) and the default table of rules.

This module is `oto_hf.rules`: it also re-exports the extension API (`rule_context.py`) and the rules of the ops that
carry weights (`layer_rules.py`), so every ready-made rule is `rules.<name>`, e.g. `register_op_rule(op, rules.unary)`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx

from .labels import Label, TensorRef, along, unlabeled, varies_along
from .layer_rules import (
    _layer_norm,
    _shared,
    addmm,
    attention,
    contract,
    convolution,
    embedding,
    group_norm,
    layer_norm,
    linear,
    matmul,
    per_channel_norm,
    tie_reduced,
)
from .rule_context import _RULES, OpRule, RuleContext, module_path, register_op_rule, rule_for, unsupported

__all__ = [
    "OpRule",
    "RuleContext",
    "addmm",
    "along_dim_mixing",
    "attention",
    "contract",
    "convolution",
    "elementwise",
    "embedding",
    "getitem",
    "group_norm",
    "indexing",
    "layer_norm",
    "like",
    "linear",
    "matmul",
    "module_path",
    "movement",
    "no_output",
    "pad",
    "per_channel_norm",
    "reduction",
    "register_op_rule",
    "rule_for",
    "spatial",
    "tie_reduced",
    "unary",
    "unsupported",
]

aten = torch.ops.aten


# ---- shape-only rules -----------------------------------------------------------------------------------------------
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
    _RULES[operator.getitem] = getitem


_register_defaults()
