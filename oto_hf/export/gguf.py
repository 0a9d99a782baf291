"""The `"gguf"` export format: one GGUF file that llama.cpp loads, with the tokenizer in it.

Every layer with the same widths gives llama.cpp's `llama` architecture; otherwise the `deci` architecture, whose
graph reads the query heads, KV heads and FFN width of each layer from arrays (llama.cpp `src/models/deci.cpp`).
The head size is written as `key_length` / `value_length` (llama.cpp's own HF converter derives it from
`hidden_size / num_attention_heads`, which is wrong once heads are pruned). q/k rows are reordered as llama.cpp's
converter does (its rotary embedding pairs neighbouring rows; transformers rotates the two halves of each head).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from .report import ExportReport, PaddedWidth

logger = logging.getLogger(__name__)

GGUF_FILE = "model.gguf"
MODEL_TYPES = ("llama", "oto_llama")
DTYPES = ("f32", "f16")
# transformers names inside a decoder layer -> llama.cpp names (both graphs read every one of these biases).
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.gate_proj.bias": "ffn_gate.bias",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.up_proj.bias": "ffn_up.bias",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.down_proj.bias": "ffn_down.bias",
}
ATTENTION_TENSORS = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output"}
# Byte-level BPE pre-tokenizers (tokenizer.json) -> the llama.cpp `tokenizer.ggml.pre` that splits text the same way.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
KNOWN_PRE_TOKENIZERS = {
    (("ByteLevel", True),): "gpt-2",
    (("Digits", True), ("ByteLevel", True)): "smollm",
    (("Split", LLAMA3_SPLIT), ("ByteLevel", False)): "llama-bpe",
}
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class LayerWidths:
    """What llama.cpp reads per layer: query heads, KV heads, FFN neurons."""

    heads: int
    kv_heads: int
    ffn: int


def write_gguf(
    model: PreTrainedModel,
    staging: Path,
    tokenizer: Any = None,
    *,
    dtype: str = "f32",
    tokenizer_pre: str | None = None,
) -> ExportReport:
    """Write `model` and `tokenizer` as `staging / "model.gguf"` for llama.cpp (`save_pruned(format="gguf")`).

    Args:
        model (`PreTrainedModel`): a LLaMA causal LM (`LlamaForCausalLM`, pruned or not).
        staging (`Path`): the empty directory to write into.
        tokenizer: its byte-level BPE tokenizer (required: llama.cpp reads the vocabulary from the file).
        dtype (`str`, *optional*, defaults to `"f32"`): `"f32"` or `"f16"` for the matrices (norms stay f32).
        tokenizer_pre (`str`, *optional*): llama.cpp's pre-tokenizer name (`tokenizer.ggml.pre`) when it cannot be
            recognised from the tokenizer (`gpt-2`, `smollm` and `llama-bpe` are).

    Returns:
        `ExportReport`: notes the architecture written; an FFN with no neuron left is padded to one zero neuron
        (exact), since llama.cpp's `deci` graph drops the whole layer when a layer has no FFN.
    """
    import gguf  # the optional `gguf` package: only this format needs it

    _check_model(model)
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES} for the gguf format, got {dtype!r}.")
    if tokenizer is None:
        raise ValueError(
            "The gguf format needs the tokenizer (llama.cpp reads the vocabulary from the file): pass "
            "`save_pruned(model, path, tokenizer, format='gguf')`."
        )
    config = model.config
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    head_dim = _head_dim(config)
    widths = layer_widths(model, head_dim)
    uniform = len(set(widths)) == 1
    arch = "llama" if uniform else "deci"
    report = ExportReport(format="gguf", notes=[f"llama.cpp architecture {arch!r}"])
    if widths[0].heads == 0:
        raise ValueError(
            "Layer 0 kept no attention head; llama.cpp reads the head size only when layer 0 has heads, so the gguf "
            "format cannot hold this model. Keep at least one head group in layer 0."
        )
    for index, layer in enumerate(widths):
        if layer.heads == 0 and f"model.layers.{index}.self_attn.o_proj.bias" in state:
            raise ValueError(
                f"Layer {index} kept no attention head but its output projection has a bias, which llama.cpp's deci "
                "graph drops with the attention-free layer; the gguf format cannot hold it exactly."
            )
        if layer.heads and (layer.kv_heads == 0 or layer.heads % layer.kv_heads):
            raise ValueError(
                f"Layer {index} has {layer.heads} query heads and {layer.kv_heads} KV heads; llama.cpp needs a whole "
                "number of query heads per KV head."
            )
        if layer.ffn == 0:
            report.padded.append(PaddedWidth(layer=index, kind="ffn", kept=0, written=1))
            report.padded_parameters += 3 * config.hidden_size
            report.padded_flops_per_token += 6 * config.hidden_size

    tensors = _tensors(model, state, widths, head_dim, dtype)
    vocabulary = _vocabulary(tokenizer, state["model.embed_tokens.weight"].shape[0], tokenizer_pre)
    writer = gguf.GGUFWriter(str(staging / GGUF_FILE), arch)
    _add_hyperparameters(writer, config, widths, head_dim, uniform, dtype)
    vocabulary(writer)
    for name, array in tensors:
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return report


def _check_model(model: PreTrainedModel) -> None:
    config = model.config
    if config.model_type not in MODEL_TYPES or not hasattr(model, "lm_head"):
        raise ValueError(
            f"The gguf format writes LLaMA causal LMs (model types {MODEL_TYPES}), got a {type(model).__name__} "
            f"({config.model_type!r}). Save other architectures with format='auto' or 'stock'."
        )
    if config.hidden_act != "silu":
        raise ValueError(f"llama.cpp's LLaMA graph uses SiLU; this model's `hidden_act` is {config.hidden_act!r}.")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") not in ROPE_TYPES:
        raise ValueError(
            f"The gguf format writes the rope types {ROPE_TYPES}; this model uses {rope.get('rope_type')!r}."
        )
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("llama.cpp's LLaMA graph rotates the whole head; this model has a `partial_rotary_factor`.")


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def layer_widths(model: PreTrainedModel, head_dim: int | None = None) -> list[LayerWidths]:
    """Query heads, KV heads and FFN neurons of each decoder layer, read from the weight shapes."""
    head_dim = head_dim or _head_dim(model.config)
    widths = []
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        widths.append(
            LayerWidths(
                heads=attention.q_proj.weight.shape[0] // head_dim,
                kv_heads=attention.k_proj.weight.shape[0] // head_dim,
                ffn=mlp.gate_proj.weight.shape[0],
            )
        )
    return widths


def _add_hyperparameters(
    writer: Any, config: Any, widths: list[LayerWidths], head_dim: int, uniform: bool, dtype: str
) -> None:
    import gguf

    def per_layer(values: list[int]) -> int | list[int]:
        return values[0] if uniform else values

    writer.add_name(str(getattr(config, "_name_or_path", "") or "oto_hf pruned model").rstrip("/").split("/")[-1])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_block_count(len(widths))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(per_layer([max(w.ffn, 1) for w in widths]))
    writer.add_head_count(per_layer([w.heads for w in widths]))
    writer.add_head_count_kv(per_layer([w.kv_heads for w in widths]))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)


def _vocabulary(tokenizer: Any, n_vocab: int, tokenizer_pre: str | None) -> Callable[[Any], None]:
    """The vocabulary as llama.cpp's `gpt2` (byte-level BPE) tokenizer model reads it: a function that adds it to a
    `GGUFWriter` (everything is checked before anything is written)."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"The gguf format needs a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}."
        )
    data = json.loads(backend.to_str())
    bpe = data["model"]
    if bpe.get("type") != "BPE" or (data.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError(
            "The gguf format writes byte-level BPE tokenizers (GPT-2 style, as SmolLM2 and Llama 3 use), got a "
            f"{bpe.get('type')} model with a {(data.get('decoder') or {}).get('type')} decoder."
        )
    pre = tokenizer_pre or _pre_tokenizer_name(data)
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    entries = [(token, index, gguf.TokenType.NORMAL) for token, index in bpe["vocab"].items()]
    for added in data.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
        entries.append((added["content"], added["id"], kind))
    for token, index, kind in entries:
        if index >= n_vocab:
            raise ValueError(
                f"Token {token!r} has id {index}, but the model's embedding has only {n_vocab} rows: the tokenizer "
                "does not belong to this model."
            )
        tokens[index], types[index] = token, kind
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    special_ids = {
        key: int(getattr(tokenizer, f"{key}_token_id"))
        for key in ("bos", "eos", "unk", "pad")
        if getattr(tokenizer, f"{key}_token_id", None) is not None
    }
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    add_bos = len(full) > len(plain) and full[0] == special_ids.get("bos")
    add_eos = len(full) > len(plain) and full[-1] == special_ids.get("eos")
    template = getattr(tokenizer, "chat_template", None)

    def add(writer: Any) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        adders = {
            "bos": writer.add_bos_token_id,
            "eos": writer.add_eos_token_id,
            "unk": writer.add_unk_token_id,
            "pad": writer.add_pad_token_id,
        }
        for key, value in special_ids.items():
            adders[key](value)
        writer.add_add_bos_token(add_bos)
        writer.add_add_eos_token(add_eos)
        if isinstance(template, str):
            writer.add_chat_template(template)

    return add


def _pre_tokenizer_name(data: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's normalizer-free byte-level pre-tokenizer."""
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    key = []
    for step in steps:
        if step.get("type") == "ByteLevel":
            if step.get("add_prefix_space"):
                key = None  # llama.cpp never adds a prefix space to byte-level BPE text
                break
            key.append(("ByteLevel", bool(step.get("use_regex", True))))
        elif step.get("type") == "Digits":
            key.append(("Digits", bool(step.get("individual_digits"))))
        elif step.get("type") == "Split":
            key.append(("Split", (step.get("pattern") or {}).get("Regex")))
        else:
            key.append((step.get("type"), None))
    name = KNOWN_PRE_TOKENIZERS.get(tuple(key)) if key is not None and not data.get("normalizer") else None
    if name is None:
        raise ValueError(
            f"The tokenizer's pre-tokenizer ({json.dumps(pre)[:300]}) is not one the gguf writer recognises "
            f"({', '.join(sorted(KNOWN_PRE_TOKENIZERS.values()))}). Pass `tokenizer_pre=` with the llama.cpp name "
            "that splits text the same way (llama.cpp `src/llama-vocab.cpp` lists them)."
        )
    return name


def _tensors(
    model: PreTrainedModel, state: dict[str, torch.Tensor], widths: list[LayerWidths], head_dim: int, dtype: str
) -> list[tuple[str, np.ndarray]]:
    """(llama.cpp name, array) for every weight; a weight llama.cpp would not read is refused."""
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    named: list[tuple[str, torch.Tensor]] = []
    unread = []
    for name, tensor in state.items():
        if name == "model.embed_tokens.weight":
            named.append(("token_embd.weight", tensor))
        elif name == "model.norm.weight":
            named.append(("output_norm.weight", tensor))
        elif name == "lm_head.weight":
            if not tied:
                named.append(("output.weight", tensor))
        elif name.startswith("model.layers."):
            index, _, suffix = name.removeprefix("model.layers.").partition(".")
            short = LAYER_TENSORS.get(suffix)
            if short is None:
                unread.append(name)
                continue
            layer = widths[int(index)]
            if layer.heads == 0 and short.split(".")[0] in ATTENTION_TENSORS:
                continue  # an attention-free layer: llama.cpp's deci graph reads none of these
            if short.startswith(("attn_q.", "attn_k.")):
                tensor = llama_cpp_rows(tensor, layer.heads if short.startswith("attn_q.") else layer.kv_heads)
            if layer.ffn == 0 and short.startswith("ffn_") and short != "ffn_norm.weight":
                tensor = _one_zero_neuron(tensor, short)
            named.append((f"blk.{index}.{short}", tensor))
        else:
            unread.append(name)
    if unread:
        raise ValueError(
            f"The gguf format cannot hold {unread[:5]}: llama.cpp's LLaMA graphs read no such tensor. Save this model "
            "with format='auto'."
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") == "llama3":
        named.append(("rope_freqs.weight", _llama3_frequency_factors(config, head_dim)))
    matrix_type = np.float32 if dtype == "f32" else np.float16
    return [
        (name, tensor.to(torch.float32).numpy().astype(matrix_type if tensor.ndim > 1 else np.float32))
        for name, tensor in named
    ]


def llama_cpp_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """q/k rows (or biases) in llama.cpp's order: the two rotary halves of each head interleaved."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _one_zero_neuron(tensor: torch.Tensor, short: str) -> torch.Tensor:
    """An FFN with no neuron, as one zero neuron (zero gate/up row, zero down column: adds exactly 0)."""
    if short == "ffn_down.weight":
        return torch.zeros(tensor.shape[0], 1, dtype=tensor.dtype)
    if short == "ffn_down.bias":
        return tensor
    return torch.zeros(1, *tensor.shape[1:], dtype=tensor.dtype)


def _llama3_frequency_factors(config: Any, head_dim: int) -> torch.Tensor:
    """llama.cpp's `rope_freqs`: the default rotary frequencies divided by the Llama 3 scaled ones."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    theta = float(config.rope_parameters["rope_theta"])
    default = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    return (default / scaled.to(torch.float64)).to(torch.float32)
