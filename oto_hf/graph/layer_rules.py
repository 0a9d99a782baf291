"""Rules for the ops that carry weights: linear, addmm and matmul, attention, convolution, embedding and the norms.

A weight's slices along its output dim become the channels of the op's output; its slices along its input dim are
tied to the channels they read. Two activations contracted together (attention) tie their rows and columns.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from .labels import Label, TensorRef, along, unlabeled, varies_along
from .rule_context import RuleContext, unsupported


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

    Everything contracted into one output entry is tied: the entries of a row of `a`, those of a column of `b`, and
    the row and column with each other (a pairing, `ChannelRegistry.pair`). This makes the query/key/value channels of
    one attention head a single group, or, in grouped-query attention, each query head a group nested in the group of
    its key/value head. The output keeps the labels of `a`'s rows.
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
    ctx.registry.pair(rows_b, cols_b)
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


# ---- helpers -------------------------------------------------------------------------------------------------------
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
