"""The `"decilm"` export format: `DeciLMForCausalLM` (`model_type: "nemotron-nas"`) with per-layer `block_configs`.

What the format holds (as vLLM's `nemotron_nas.py` reads it; see `docs/serving_formats.md` of the project notes):
one query-head count and head_dim for every layer, KV heads per layer as `num_attention_heads // n_heads_in_group`,
an FFN width per layer (`ffn.intermediate_size`; `ffn.ffn_mult` too where the width is a multiple of 256, the only
key SGLang, TensorRT-LLM, MLX and llama.cpp's converter read), and a no-op attention or FFN per layer. So the FFN
widths are written exactly, no-op sub-blocks have no weights, query heads are zero-padded to one count, and each
layer gets the fewest KV heads that hold its heads (or, with `kv_heads="uniform"`, the same in every layer). vLLM
0.32 (CPU) was run on such folders of a pruned SmolLM2-135M: same greedy tokens as transformers, and its KV cache
holds per-layer KV heads (29,952 tokens per GiB against 23,296 with 3 KV heads everywhere, 10 layers having 1).
The configuration and modeling files are shipped beside the weights (`trust_remote_code=True`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from .._version import __version__
from ..record import SUMMARY_KEY
from . import decilm_remote
from .auto import pruning_summary
from .decilm_remote.configuration_decilm import DeciLMConfig
from .decilm_remote.modeling_decilm import DeciLMForCausalLM
from .decoder import (
    MLP_PROJECTIONS,
    Decoder,
    LayerWidths,
    build_from_state,
    check_same_logits,
    fewest_kv_heads,
    padded_layer_tensors,
    padding_cost,
    plan_attention,
    plan_query_heads,
    read_decoder,
)
from .report import EXPORT_KEY, ExportReport

# Model types whose decoder is the LLaMA decoder that DeciLM engines implement (RMSNorm, gated MLP, RoPE, no QK-norm).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
REMOTE_FILES = ("configuration_decilm.py", "modeling_decilm.py")
AUTO_MAP = {
    "AutoConfig": "configuration_decilm.DeciLMConfig",
    "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM",
}
FFN_MULT_GRID = 256  # engines that read `ffn_mult` round int(2 * ffn_mult * hidden / 3) up to a multiple of this
COPIED_CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "use_cache",
    "tie_word_embeddings",
    "rope_parameters",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def write_decilm(
    model: PreTrainedModel, staging: Path, tokenizer: Any = None, *, kv_heads: str = "per_layer"
) -> ExportReport:
    """Write `model` as a DeciLM (`nemotron-nas`) folder: exact FFN widths, no-op sub-blocks, padded attention.

    `kv_heads="per_layer"` (default) gives each layer the fewest KV heads that hold its heads (`n_heads_in_group`
    per layer, which vLLM, SGLang, TensorRT-LLM and llama.cpp's converter read); `"uniform"` writes the same KV
    heads in every attention layer, for engines that size the KV cache from one layer.
    """
    if kv_heads not in ("uniform", "per_layer"):
        raise ValueError(f"`kv_heads` must be 'uniform' or 'per_layer', got {kv_heads!r}.")
    _check_architecture(model)
    decoder = read_decoder(model, "decilm")
    attention_no_op = [
        w.heads == 0 and (erased or not _has_nonzero_bias(layer.self_attn.o_proj))
        for w, layer, erased in zip(decoder.widths, decoder.layers, decoder.erased_attention)
    ]
    ffn_no_op = [w.ffn == 0 for w in decoder.widths]
    for index, layer in enumerate(decoder.layers):
        if ffn_no_op[index] and not decoder.erased_ffn[index] and _has_nonzero_bias(layer.mlp.down_proj):
            raise ValueError(
                f"format='decilm': layer {index} has no FFN neurons but its down_proj bias is not zero; a no-op FFN "
                "cannot hold that bias. Save with `format='auto'` or `format='stock'`."
            )
    zero_attention = _first_ffn_before_attention(attention_no_op, ffn_no_op)
    if zero_attention is not None:
        attention_no_op[zero_attention] = False
    active = [w for w, no_op in zip(decoder.widths, attention_no_op) if not no_op]
    if not active:
        raise ValueError("format='decilm': every layer's attention is empty; engines need one attention layer.")
    dense_heads = model.config.num_attention_heads
    dense = (dense_heads, getattr(model.config, "num_key_value_heads", None) or dense_heads)
    if kv_heads == "uniform":
        heads, uniform = plan_attention(active, dense, lambda heads, kv_heads: True)
        layer_kv_heads = [uniform] * len(decoder.widths)
    else:
        heads = plan_query_heads(active, dense)
        layer_kv_heads = [fewest_kv_heads(w, heads) for w in decoder.widths]
    state = dict(model.state_dict())
    blocks, written = [], []
    for index, w in enumerate(decoder.widths):
        no_op, kv = attention_no_op[index], layer_kv_heads[index]
        attention = {"no_op": no_op, "replace_with_linear": False, "n_heads_in_group": None if no_op else heads // kv}
        blocks.append({"attention": attention, "ffn": ffn_block(w.ffn, model.config.hidden_size)})
        written.append(LayerWidths(heads=0 if no_op else heads, kv_heads=0 if no_op else kv, ffn=w.ffn))
        if not no_op:
            state.update(padded_layer_tensors(decoder, index, heads, kv, None))
    state = {key: t for key, t in state.items() if not decoder.in_sub_blocks(key, attention_no_op, ffn_no_op)}
    config = DeciLMConfig(**_config_values(model, decoder, heads, blocks))
    forced = [index == zero_attention for index in range(len(decoder.layers))]
    exported = build_from_state(
        DeciLMForCausalLM,
        config,
        state,
        model,
        zero_fill=lambda key: decoder.in_sub_blocks(key, forced, [False] * len(forced)),
    )
    entries, totals = padding_cost(decoder, written, model, exported)
    setattr(exported.config, EXPORT_KEY, {"format": "decilm", **totals})
    check_same_logits(model, exported, "decilm")
    exported.save_pretrained(staging)
    source = Path(decilm_remote.__file__).parent
    for name in REMOTE_FILES:
        shutil.copyfile(source / name, staging / name)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    written_kv = sorted({w.kv_heads for w in written if w.heads})
    notes = [f"DeciLMForCausalLM: {heads} query heads in every attention layer, {written_kv} KV heads"]
    if any(attention_no_op):
        notes.append(f"no-op attention in layers {[i for i, no_op in enumerate(attention_no_op) if no_op]}")
    if zero_attention is not None:
        notes.append(
            f"layer {zero_attention}'s empty attention is written as zero heads, not a no-op: vLLM's DeciLM layer "
            "(0.32, nemotron_nas.py) starts the residual stream in the first attention and fails on an FFN before it"
        )
    if any(ffn_no_op):
        notes.append(f"no-op FFN in layers {[i for i, no_op in enumerate(ffn_no_op) if no_op]}")
    off_grid = [i for i, w in enumerate(decoder.widths) if w.ffn % FFN_MULT_GRID]
    if off_grid:
        notes.append(
            f"FFN widths of layers {off_grid} are not multiples of {FFN_MULT_GRID}, so they are written as "
            "`intermediate_size` only: vLLM reads it (0.32), SGLang, TensorRT-LLM, MLX and llama.cpp's converter "
            "read only `ffn_mult` (train with a 256 grid for those)"
        )
    return ExportReport(format="decilm", padded=entries, notes=notes, **totals)


def _first_ffn_before_attention(attention_no_op: list[bool], ffn_no_op: list[bool]) -> int | None:
    """The layer whose FFN would run before any attention (its own attention a no-op), if there is one."""
    for index, (attention, ffn) in enumerate(zip(attention_no_op, ffn_no_op)):
        if not attention:
            return None
        if not ffn:
            return index
    return None


def _check_architecture(model: PreTrainedModel) -> None:
    """Refuse, with the reason, what the DeciLM decoder cannot run exactly."""
    config = model.config
    model_type = config.model_type.removeprefix("oto_")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"format='decilm' holds LLaMA-style decoders ({', '.join(SUPPORTED_MODEL_TYPES)}); {type(model).__name__} "
            f"has model_type {config.model_type!r}. Save it with `format='stock'` or `format='auto'`."
        )
    layer_types = getattr(config, "layer_types", None) or []
    windowed = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
    if windowed or any(t != "full_attention" for t in layer_types):
        raise ValueError(
            f"format='decilm' has no sliding-window attention, but {type(model).__name__} uses it (sliding_window="
            f"{getattr(config, 'sliding_window', None)}, layer_types={sorted(set(layer_types))}). Save it with "
            "`format='stock'`."
        )
    if not type(model).__name__.endswith("ForCausalLM"):
        raise ValueError(
            f"format='decilm' writes causal LMs (DeciLMForCausalLM); got {type(model).__name__}. Save it with "
            "`format='stock'` or `format='auto'`."
        )


def _has_nonzero_bias(linear: torch.nn.Linear) -> bool:
    return linear.bias is not None and bool(linear.bias.detach().ne(0).any())


def ffn_block(width: int, hidden_size: int) -> dict[str, Any]:
    """A layer's `ffn` entry: its exact width, and `ffn_mult` where engines that read only it get the same width."""
    if width == 0:
        return {"no_op": True, "replace_with_linear": False, "ffn_mult": None}
    block: dict[str, Any] = {"no_op": False, "replace_with_linear": False, "intermediate_size": width}
    if width % FFN_MULT_GRID == 0:
        block["ffn_mult"] = 3 * width / (2 * hidden_size)
    return block


def _config_values(model: PreTrainedModel, decoder: Decoder, heads: int, blocks: list[dict[str, Any]]) -> dict:
    """The DeciLM config's arguments: the model's own global settings, the written heads, biases and blocks."""
    config = model.config
    values = {key: getattr(config, key) for key in COPIED_CONFIG_KEYS if hasattr(config, key)}
    attentions = [layer.self_attn for layer, erased in zip(decoder.layers, decoder.erased_attention) if not erased]
    mlps = [layer.mlp for layer, erased in zip(decoder.layers, decoder.erased_ffn) if not erased]
    qkv = {getattr(a, name).bias is not None for a in attentions for name in ("q_proj", "k_proj", "v_proj")}
    o = {a.o_proj.bias is not None for a in attentions}
    mlp = {getattr(m, name).bias is not None for m in mlps for name in MLP_PROJECTIONS}
    if len(qkv) > 1 or len(o) > 1 or len(mlp) > 1:
        raise ValueError(
            "format='decilm' has one bias setting for q/k/v, one for o_proj and one for the MLP; this model's "
            "projections differ in whether they have biases."
        )
    # Without any attention left (a lone FFN's zero heads), biases are zeros either way.
    has_qkv_bias, has_o_bias = (qkv.pop() if qkv else False), (o.pop() if o else False)
    has_mlp_bias = mlp.pop() if mlp else bool(getattr(config, "mlp_bias", False))
    values.update(
        num_attention_heads=heads,
        head_dim=decoder.head_dim,
        attention_bias=has_o_bias,
        qkv_bias=has_qkv_bias if has_qkv_bias != has_o_bias else None,
        mlp_bias=has_mlp_bias,
        block_configs=blocks,
        architectures=["DeciLMForCausalLM"],
        auto_map=dict(AUTO_MAP),
        oto_hf_version=__version__,
    )
    summary = pruning_summary(model)
    if summary is not None:
        values[SUMMARY_KEY] = summary
    return values
