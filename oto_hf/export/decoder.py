"""LLaMA-family decoders read from their module shapes, and their layers padded with exact zeros.

A layer's widths come from its projections' shapes (query heads: `q_proj` rows / head_dim; KV heads: `k_proj` rows /
head_dim; FFN neurons: `gate_proj` rows), not from the pruning record or the group structure, so any pruned (or
reloaded) model is read the same way. Query head h of a layer with n_q query and n_kv KV heads reads KV head
h // (n_q / n_kv), as transformers' `repeat_kv` does.

Padding is exact: a padded query head has zero `q_proj` rows and zero `o_proj` columns, so it adds nothing; a padded
KV head has zero `k_proj`/`v_proj` rows and only padded query heads; a padded FFN neuron has zero `gate_proj` and
`up_proj` rows and zero `down_proj` columns. When the written layout has smaller query groups than a layer, that
layer's KV head is copied into several KV slots, each serving part of its query heads (same keys and values, so the
same outputs).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from transformers import PreTrainedModel

from ..stats import count_parameters
from .report import PaddedWidth

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
# State-dict key prefixes (inside a layer) of the attention and FFN sub-blocks, with the norm that feeds each.
ATTENTION_KEYS = ("self_attn.", "input_layernorm.")
FFN_KEYS = ("mlp.", "post_attention_layernorm.")
# Per-head norms whose weight (one head_dim vector) is shared by every head (Qwen3's QK-norm): copied as they are.
SHARED_HEAD_NORMS = ("q_norm", "k_norm")


@dataclass(frozen=True)
class LayerWidths:
    """One decoder layer's widths: query heads, KV heads, FFN neurons."""

    heads: int
    kv_heads: int
    ffn: int


@dataclass(frozen=True)
class Decoder:
    """The decoder layers of a model, where they sit in its state dict, their head_dim and widths."""

    layers: list[nn.Module]
    prefix: str  # layer i's state-dict keys start with f"{prefix}.{i}."
    head_dim: int
    widths: list[LayerWidths]
    erased_attention: list[bool]  # the layer's attention is a stand-in without parameters (an erased sub-block)
    erased_ffn: list[bool]

    def in_sub_blocks(self, key: str, attention: list[bool], ffn: list[bool]) -> bool:
        """Whether state-dict `key` belongs to a layer's attention (with its norm) where `attention[layer]` is true,
        or to its FFN (with its norm) where `ffn[layer]` is true."""
        if not key.startswith(self.prefix + "."):
            return False
        index, _, rest = key[len(self.prefix) + 1 :].partition(".")
        if not index.isdigit():
            return False
        if attention[int(index)] and rest.startswith(ATTENTION_KEYS):
            return True
        return ffn[int(index)] and rest.startswith(FFN_KEYS)


def read_decoder(model: PreTrainedModel, format_name: str) -> Decoder:
    """The decoder of a LLaMA-family model; a `ValueError` saying what is missing for any other model."""
    how = f"Save it with `format='auto'` instead, or use a format that holds {type(model).__name__}."
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"format={format_name!r} writes LLaMA-family decoders (a `layers` list of decoder layers with "
            f"self_attn.{{q,k,v,o}}_proj and mlp.{{gate,up,down}}_proj); {type(model).__name__} has no decoder "
            f"`layers`. {how}"
        )
    names = {id(module): name for name, module in model.named_modules()}
    head_dims, widths, erased_attention, erased_ffn = set(), [], [], []
    for index, layer in enumerate(layers):
        attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        whole_block = _is_erased(layer)  # an erased block: the layer passes its input on
        erased_attention.append(whole_block or _is_erased(attention))
        erased_ffn.append(whole_block or _is_erased(mlp))
        missing = [] if erased_attention[-1] else [n for n in ATTENTION_PROJECTIONS if not _is_linear(attention, n)]
        missing = [f"self_attn.{n}" for n in missing]
        missing += [] if erased_ffn[-1] else [f"mlp.{n}" for n in MLP_PROJECTIONS if not _is_linear(mlp, n)]
        if missing:
            raise ValueError(
                f"format={format_name!r} writes LLaMA-family decoders with separate projections; layer {index} of "
                f"{type(model).__name__} has no nn.Linear {', '.join(missing)} (fused projections and mixtures of "
                f"experts are not supported). {how}"
            )
        if not erased_attention[-1]:
            _check_parameters(
                attention, ATTENTION_PROJECTIONS + SHARED_HEAD_NORMS, f"layer {index} self_attn", format_name
            )
            head_dim = getattr(attention, "head_dim", None)
            if not isinstance(head_dim, int) or head_dim <= 0:
                raise ValueError(f"Layer {index} of {type(model).__name__} has no integer `head_dim`. {how}")
            head_dims.add(head_dim)
        if not erased_ffn[-1]:
            _check_parameters(mlp, MLP_PROJECTIONS, f"layer {index} mlp", format_name)
    if not head_dims:
        config = model.config
        head_dims.add(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    if len(head_dims) != 1:
        raise ValueError(f"The layers of {type(model).__name__} have different head_dim values {sorted(head_dims)}.")
    head_dim = head_dims.pop()
    for index, layer in enumerate(layers):
        heads, kv_heads = (0, 0) if erased_attention[index] else _head_counts(index, layer.self_attn, head_dim)
        ffn = 0 if erased_ffn[index] else _ffn_width(index, layer.mlp)
        widths.append(LayerWidths(heads=heads, kv_heads=kv_heads, ffn=ffn))
    return Decoder(
        layers=list(layers),
        prefix=names[id(layers)],
        head_dim=head_dim,
        widths=widths,
        erased_attention=erased_attention,
        erased_ffn=erased_ffn,
    )


def _is_erased(module: nn.Module | None) -> bool:
    """A sub-block replaced by a stand-in without parameters (an erased attention or FFN) adds nothing."""
    return isinstance(module, nn.Module) and next(module.parameters(), None) is None


def _is_linear(module: nn.Module | None, name: str) -> bool:
    return isinstance(getattr(module, name, None), nn.Linear)


def _check_parameters(module: nn.Module, allowed: tuple[str, ...], where: str, format_name: str) -> None:
    extra = [name for name, _ in module.named_parameters() if name.split(".")[0] not in allowed]
    if extra:
        raise ValueError(
            f"format={format_name!r} cannot pad {where}: it has parameters {extra} that the format does not know how "
            "to widen. Save it with `format='auto'` instead."
        )


def _head_counts(index: int, attention: nn.Module, head_dim: int) -> tuple[int, int]:
    q, k, v, o = (getattr(attention, n) for n in ATTENTION_PROJECTIONS)
    if q.out_features % head_dim or k.out_features % head_dim or k.out_features != v.out_features:
        raise ValueError(
            f"Layer {index}: q_proj ({q.out_features}), k_proj ({k.out_features}) and v_proj ({v.out_features}) rows "
            f"are not whole heads of head_dim {head_dim}."
        )
    if o.in_features != q.out_features:
        raise ValueError(f"Layer {index}: o_proj takes {o.in_features} inputs but q_proj has {q.out_features} rows.")
    heads, kv_heads = q.out_features // head_dim, k.out_features // head_dim
    if (heads == 0) != (kv_heads == 0) or (kv_heads and heads % kv_heads):
        raise ValueError(f"Layer {index} has {heads} query heads for {kv_heads} KV heads, which is not whole groups.")
    groups = getattr(attention, "num_key_value_groups", None)
    if heads and groups is not None and groups != heads // kv_heads:
        raise ValueError(
            f"Layer {index} has {heads} query and {kv_heads} KV heads, but its `num_key_value_groups` is {groups}; "
            "query heads must read KV head h // (query heads / KV heads)."
        )
    return heads, kv_heads


def _ffn_width(index: int, mlp: nn.Module) -> int:
    gate, up, down = (getattr(mlp, n) for n in MLP_PROJECTIONS)
    if not gate.out_features == up.out_features == down.in_features:
        raise ValueError(
            f"Layer {index}: gate_proj ({gate.out_features}), up_proj ({up.out_features}) and down_proj "
            f"({down.in_features}) widths differ."
        )
    return gate.out_features


def fits(widths: LayerWidths, heads: int, kv_heads: int) -> bool:
    """Whether a layer's heads fit `heads` query heads in `kv_heads` equal groups (its KV heads may be copied)."""
    if widths.heads == 0:
        return True
    group = heads // kv_heads
    slots_per_kv_head = -(-(widths.heads // widths.kv_heads) // group)
    return widths.kv_heads * slots_per_kv_head <= kv_heads


def plan_attention(
    widths: list[LayerWidths], dense: tuple[int, int], valid: Callable[[int, int], bool]
) -> tuple[int, int]:
    """The (query heads, KV heads) that every layer fits, with the fewest attention parameters, then KV heads.

    `dense` (the unpruned counts) always fits; `valid(heads, kv_heads)` says whether the target config accepts them.
    """
    most = max(1, *(w.heads for w in widths))
    candidates = []
    for heads in range(most, max(2 * most, dense[0]) + 1):
        for kv_heads in (d for d in range(1, heads + 1) if heads % d == 0):
            if all(fits(w, heads, kv_heads) for w in widths):
                candidates.append((heads + kv_heads, kv_heads, heads))
    for _, kv_heads, heads in sorted(candidates):
        if valid(heads, kv_heads):
            return heads, kv_heads
    raise ValueError(
        f"No uniform attention layout holds these layers (widths {[(w.heads, w.kv_heads) for w in widths]}) and "
        "is accepted by the config class. Save with `format='auto'` instead."
    )


def fewest_kv_heads(widths: LayerWidths, heads: int) -> int:
    """The fewest KV heads (a divisor of `heads`) that hold a layer's heads under `heads` query heads."""
    return next(kv for kv in range(1, heads + 1) if heads % kv == 0 and fits(widths, heads, kv))


def plan_query_heads(widths: list[LayerWidths], dense: tuple[int, int]) -> int:
    """The query-head count, the same in every layer, that with each layer's fewest KV heads has the fewest attention
    parameters (then the fewest KV heads)."""
    most = max(1, *(w.heads for w in widths))
    costs = []
    for heads in range(most, max(2 * most, dense[0]) + 1):
        kv_heads = sum(fewest_kv_heads(w, heads) for w in widths)
        costs.append((len(widths) * heads + kv_heads, kv_heads, heads))
    return min(costs)[2]


def head_sources(widths: LayerWidths, heads: int, kv_heads: int) -> tuple[list[int], list[int]]:
    """For each written query head and KV head, the layer's own head it holds (-1: a zero head)."""
    query, kv = [-1] * heads, [-1] * kv_heads
    if widths.heads == 0:
        return query, kv
    group, own_group = heads // kv_heads, widths.heads // widths.kv_heads
    slots_per_kv_head = -(-own_group // group)
    for kv_head in range(widths.kv_heads):
        for part in range(slots_per_kv_head):
            slot = kv_head * slots_per_kv_head + part
            kv[slot] = kv_head
            for i in range(min(group, own_group - part * group)):
                query[slot * group + i] = kv_head * own_group + part * group + i
    return query, kv


def _gather_heads(tensor: torch.Tensor, sources: list[int], head_dim: int, dim: int) -> torch.Tensor:
    """Blocks of `head_dim` along `dim`, one per source head (zeros for -1)."""
    zero_shape = list(tensor.shape)
    zero_shape[dim] = head_dim
    blocks = [tensor.narrow(dim, s * head_dim, head_dim) if s >= 0 else tensor.new_zeros(zero_shape) for s in sources]
    return torch.cat(blocks, dim=dim)


def _pad_to(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`tensor` with zeros appended along `dim` up to `width`."""
    shape = list(tensor.shape)
    shape[dim] = width - tensor.shape[dim]
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)


@torch.no_grad()
def padded_layer_tensors(
    decoder: Decoder, index: int, heads: int | None, kv_heads: int | None, ffn: int | None
) -> dict[str, torch.Tensor]:
    """Layer `index`'s attention (to `heads`/`kv_heads`) and MLP (to `ffn` neurons) tensors, by state-dict key.

    `None` leaves that part out (a no-op sub-block, or one the caller does not pad); an erased sub-block has no
    tensors to pad (`build_from_state` fills them with zeros).
    """
    layer, prefix = decoder.layers[index], f"{decoder.prefix}.{index}"
    tensors = {}
    if heads is not None and kv_heads is not None and not decoder.erased_attention[index]:
        query, kv = head_sources(decoder.widths[index], heads, kv_heads)
        attention = layer.self_attn
        for name, sources in (("q_proj", query), ("k_proj", kv), ("v_proj", kv)):
            module = getattr(attention, name)
            tensors[f"{prefix}.self_attn.{name}.weight"] = _gather_heads(module.weight, sources, decoder.head_dim, 0)
            if module.bias is not None:
                tensors[f"{prefix}.self_attn.{name}.bias"] = _gather_heads(module.bias, sources, decoder.head_dim, 0)
        tensors[f"{prefix}.self_attn.o_proj.weight"] = _gather_heads(
            attention.o_proj.weight, query, decoder.head_dim, 1
        )
    if ffn is not None and not decoder.erased_ffn[index]:
        for name, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
            module = getattr(layer.mlp, name)
            tensors[f"{prefix}.mlp.{name}.weight"] = _pad_to(module.weight, ffn, dim)
            if module.bias is not None and dim == 0:
                tensors[f"{prefix}.mlp.{name}.bias"] = _pad_to(module.bias, ffn, 0)
    return tensors


def padding_cost(
    decoder: Decoder, written: list[LayerWidths], pruned: PreTrainedModel, exported: PreTrainedModel
) -> tuple[list[PaddedWidth], dict[str, int]]:
    """What the exported model (with `written` widths) adds to the pruned one: per-layer entries and the totals.

    Totals: `padded_parameters` (all parameters, net), `padded_flops_per_token` (2 per added linear weight),
    `padded_attention_flops_per_context_token` (4 x head_dim per added query head), `padded_kv_bytes_per_token`.
    """
    entries = []
    for index, (own, new) in enumerate(zip(decoder.widths, written)):
        for kind, kept, width in (("heads", own.heads, new.heads), ("kv_heads", own.kv_heads, new.kv_heads)):
            if width != kept:
                entries.append(PaddedWidth(layer=index, kind=kind, kept=kept, written=width))
        if new.ffn != own.ffn:
            entries.append(PaddedWidth(layer=index, kind="ffn", kept=own.ffn, written=new.ffn))
    extra_heads = sum(new.heads - own.heads for own, new in zip(decoder.widths, written))
    extra_kv_heads = sum(new.kv_heads - own.kv_heads for own, new in zip(decoder.widths, written))
    value_bytes = next(pruned.parameters()).element_size()
    totals = {
        "padded_parameters": count_parameters(exported) - count_parameters(pruned),
        "padded_flops_per_token": 2 * (_linear_weights(exported) - _linear_weights(pruned)),
        "padded_attention_flops_per_context_token": 4 * decoder.head_dim * extra_heads,
        "padded_kv_bytes_per_token": 2 * decoder.head_dim * extra_kv_heads * value_bytes,
    }
    return entries, totals


def _linear_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


@torch.no_grad()
def build_from_state(
    model_class: type,
    config: Any,
    state: dict[str, torch.Tensor],
    source: PreTrainedModel,
    zero_fill: Callable[[str], bool] = lambda key: False,
) -> PreTrainedModel:
    """`model_class(config)` holding `state` (no random initialisation), with `source`'s generation config and the
    non-persistent buffers (e.g. rotary frequencies) of its modules of the same names. Parameters missing from
    `state` whose key `zero_fill` accepts (those of erased sub-blocks) are zeros."""
    with torch.device("meta"):
        model = model_class(config)
    expected = model.state_dict()
    like = next(iter(state.values()))
    for key in expected:
        if key not in state and zero_fill(key):
            state[key] = torch.zeros(expected[key].shape, dtype=like.dtype, device=like.device)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise RuntimeError(
            f"The padded weights do not fit {model_class.__name__}: unexpected keys {result.unexpected_keys[:8]}."
        )
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    source_buffers = dict(source.named_buffers())
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta and name in source_buffers:
            module_name, _, attr = name.rpartition(".")
            model.get_submodule(module_name)._buffers[attr] = source_buffers[name].clone()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"The padded weights do not fill {model_class.__name__}: {left[:8]} are missing.")
    model.generation_config = copy.deepcopy(source.generation_config)
    return model.eval()


@torch.no_grad()
def check_same_logits(pruned: PreTrainedModel, exported: PreTrainedModel, format_name: str) -> None:
    """Raise if `exported` (the padded model) does not give `pruned`'s logits on a few tokens."""
    vocab = pruned.config.vocab_size
    device = next(pruned.parameters()).device
    input_ids = (torch.arange(16, device=device).reshape(2, 8) * 7 + 3) % vocab
    was_training = pruned.training
    pruned.eval()
    try:
        expected = pruned(input_ids=input_ids, use_cache=False).logits.float()
    finally:
        pruned.train(was_training)
    got = exported(input_ids=input_ids, use_cache=False).logits.float()
    dtype = next(pruned.parameters()).dtype
    tolerance = max(1e-4, 100 * torch.finfo(dtype).eps) * max(1.0, float(expected.abs().max()))
    difference = float((expected - got).abs().max())
    if not difference <= tolerance:
        raise RuntimeError(
            f"format={format_name!r}: the written model's logits differ from the pruned model's by {difference:.3g} "
            f"(tolerance {tolerance:.3g}), so it was not written. This is a bug in oto_hf's {format_name!r} writer; "
            "please report it, and save with `format='auto'` meanwhile."
        )
