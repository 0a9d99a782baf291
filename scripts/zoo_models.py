"""The zoo of `scripts/bench_zoo.py`: every model type in transformers' Auto mappings with a main task head, built
tiny (random weights, shrunk config) with that head, or skipped with the reason it cannot be.

The head is the first of image classification, causal LM (not for encoders with a masked-LM head), sequence
classification and question answering that the model type has; the config class's defaults are shrunk (hidden 32,
2 layers, 4 heads, 2 KV heads, FFN 37, vocab 99; `TINY`).
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

MAX_PARAMETERS = 10_000_000  # a "tiny" model above this kept some large default the generic shrinking missed

# (Auto class, mapping) in the order a main task head is chosen.
TASKS = (
    ("AutoModelForImageClassification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
)

# Shrunk config values: a key is set when the config class has it (ints only; lists are shrunk in `_shrink_list`).
TINY = {
    "vocab_size": 99,
    "hidden_size": 32,
    "d_model": 32,
    "n_embd": 32,
    "dim": 32,
    "embed_dim": 32,
    "num_hidden_layers": 2,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 37,
    "decoder_ffn_dim": 37,
    "num_layers": 2,
    "n_layer": 2,
    "n_layers": 2,
    "num_attention_heads": 4,
    "n_head": 4,
    "n_heads": 4,
    "num_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 37,
    "ffn_dim": 37,
    "n_inner": 37,
    "d_ff": 37,
    "moe_intermediate_size": 37,
    "shared_expert_intermediate_size": 37,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "head_dim": 8,
    "rotary_dim": 4,
    "image_size": 64,
    "patch_size": 4,
    "window_size": 2,
    "num_labels": 3,
    "max_position_embeddings": 128,
}
FFN_KEYS = (
    "intermediate_size",
    "ffn_dim",
    "n_inner",
    "d_ff",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
)
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
EXPERT_FFN = 40
# Non-integer choices: BigBird switches from block-sparse to full attention on short inputs anyway, rebuilding its
# attention layers from the config at run time; start in full attention.
TINY_CHOICES = {"attention_type": "original_full"}
# Model types whose Auto entry is only a wrapper around other models (or needs extra inputs).
WRAPPERS = ("encoder-decoder", "vision-encoder-decoder", "speech-encoder-decoder", "timm_wrapper", "auto")


class Skip(Exception):
    """The architecture cannot be built or run from a tiny config: not part of the sweep."""


def main_task(model_type: str) -> tuple[str, str] | None:
    """(Auto class, model class name) of the architecture's main task head."""
    masked = modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    for auto_class, mapping_name in TASKS:
        class_name = getattr(modeling_auto, mapping_name).get(model_type)
        if not isinstance(class_name, str):
            continue
        if auto_class == "AutoModelForCausalLM" and model_type in masked:
            continue  # an encoder's LM head: its classification head is the main task
        return auto_class, class_name
    causal = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    return ("AutoModelForCausalLM", causal) if isinstance(causal, str) else None


def zoo_model_types() -> list[str]:
    """Every model type with a task head in `TASKS`, sorted; wrappers around other models left out."""
    types = set()
    for _, mapping_name in TASKS:
        types.update(getattr(modeling_auto, mapping_name))
    return sorted(t for t in types if t in CONFIG_MAPPING and t not in WRAPPERS)


def tiny_config(model_type: str) -> Any:
    """The model type's config with `TINY` values for the keys it has; `Skip` when it cannot be built so."""
    config_class = CONFIG_MAPPING[model_type]
    try:
        defaults = config_class().to_dict()
    except Exception as error:
        raise Skip(f"default config cannot be built: {type(error).__name__}: {first_line(error)}") from error
    if getattr(config_class, "sub_configs", None):
        raise Skip(f"composite config ({', '.join(config_class.sub_configs)}): not a single tiny model")
    attribute_map = getattr(config_class, "attribute_map", {}) or {}
    kwargs: dict[str, Any] = {}
    experts = any(key in defaults for key in EXPERT_KEYS)
    for key, value in TINY.items():
        if experts and key in FFN_KEYS:
            value = EXPERT_FFN  # grouped matmuls of experts need 16-byte aligned strides
        present = key in defaults or key in attribute_map
        if present and isinstance(defaults.get(key, 0), (int, type(None))) and not isinstance(defaults.get(key), bool):
            if key in defaults and defaults[key] is None and key not in ("head_dim", "num_key_value_heads"):
                continue
            kwargs[attribute_map.get(key, key) if key not in defaults else key] = value
    kwargs.update({key: value for key, value in TINY_CHOICES.items() if key in defaults})
    for key in ("hidden_sizes", "depths", "num_heads", "embed_dims", "mlp_ratios", "encoder_hidden_sizes"):
        value = defaults.get(key)
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            kwargs[key] = _shrink_list(key, value)
    if "layer_types" in defaults and isinstance(defaults["layer_types"], list):
        kwargs["layer_types"] = None  # derived again from the (smaller) number of layers
    if defaults.get("pad_token_id") is None and "pad_token_id" in defaults:
        kwargs["pad_token_id"] = 0
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        if isinstance(defaults.get(key), int) and defaults[key] >= TINY["vocab_size"]:
            kwargs[key] = 1
    try:
        return config_class(**kwargs)
    except Exception as error:
        raise Skip(f"tiny config rejected: {type(error).__name__}: {first_line(error)}") from error


def _shrink_list(key: str, value: list[int]) -> list[int]:
    """Per-stage lists of hierarchical models, shrunk: widths 8, 16, 32, ...; one block and two heads per stage."""
    if key in ("hidden_sizes", "embed_dims", "encoder_hidden_sizes"):
        return [8 * 2**i for i in range(len(value))]
    if key == "depths":
        return [1] * len(value)
    if key == "num_heads":
        return [2] * len(value)
    return value


def build(model_type: str) -> tuple[torch.nn.Module, str]:
    """The tiny model with its main task head (fp32, eval, seeded) and the Auto class that loads it."""
    task = main_task(model_type)
    if task is None:
        raise Skip("no task head among image classification, causal LM, sequence classification, QA")
    auto_class, class_name = task
    config = tiny_config(model_type)
    model_class = getattr(transformers, class_name, None)
    if model_class is None:
        raise Skip(f"{class_name} is not importable (optional dependency missing)")
    torch.manual_seed(0)
    try:
        model = model_class(config).float().eval()
    except Exception as error:
        raise Skip(f"{class_name} cannot be built from the tiny config: {type(error).__name__}: {first_line(error)}")
    size = sum(p.numel() for p in model.parameters())
    if size > MAX_PARAMETERS:
        raise Skip(f"still {size / 1e6:.0f}M parameters after shrinking the usual config keys")
    if getattr(model, "main_input_name", "input_ids") not in ("input_ids", "pixel_values"):
        raise Skip(f"main input {model.main_input_name!r} (only token ids and pixels are generated)")
    return model, auto_class


def first_line(error: BaseException) -> str:
    """The first line of an error message (200 characters at most), for one-line reasons."""
    return (str(error).strip().splitlines() or [""])[0][:200]
