"""The `"stock"` export format: the model's own config type, every layer zero-padded to the same widths.

Engines and plain transformers read one query-head count, one KV-head count and one FFN width for all layers. Each
layer is padded with exact zeros up to the widest layout (`oto_hf/export/decoder.py` says how), the padded model's
logits are checked against the pruned model's, and the report says what the padding costs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .._version import __version__
from ..record import SUMMARY_KEY
from .auto import pruning_summary
from .decoder import (
    LayerWidths,
    build_from_state,
    check_same_logits,
    padded_layer_tensors,
    padding_cost,
    plan_attention,
    read_decoder,
)
from .report import EXPORT_KEY, ExportReport

# Keys of a pruned (`oto_*`) config that a stock config does not carry (nor any other `oto_*` key but the summary).
PRUNED_ONLY_KEYS = ("auto_map", "model_type", "transformers_version")


def write_stock(model: PreTrainedModel, staging: Path, tokenizer: Any = None) -> ExportReport:
    """Write `model` with its stock config class, each layer zero-padded to the largest widths (exact)."""
    decoder = read_decoder(model, "stock")
    model_class, config_class = stock_classes(model)
    base = stock_config_values(model, decoder.head_dim)
    dense_heads = model.config.num_attention_heads
    dense = (dense_heads, getattr(model.config, "num_key_value_heads", None) or dense_heads)
    config_class(**base)  # the model's own values must make a valid config; its error says why if they do not

    def valid(heads: int, kv_heads: int) -> bool:
        try:
            config_class(**{**base, "num_attention_heads": heads, "num_key_value_heads": kv_heads})
        except Exception:  # the config class validates its fields (e.g. LLaMA: hidden_size % heads == 0)
            return False
        return True

    heads, kv_heads = plan_attention(decoder.widths, dense, valid)
    ffn = max(w.ffn for w in decoder.widths)
    config = config_class(
        **{**base, "num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": ffn}
    )
    state = dict(model.state_dict())
    for index in range(len(decoder.layers)):
        state.update(padded_layer_tensors(decoder, index, heads, kv_heads, ffn))

    def erased(key: str) -> bool:
        return decoder.in_sub_blocks(key, decoder.erased_attention, decoder.erased_ffn)

    exported = build_from_state(model_class, config, state, model, zero_fill=erased)
    written = [LayerWidths(heads=heads, kv_heads=kv_heads, ffn=ffn)] * len(decoder.layers)
    entries, totals = padding_cost(decoder, written, model, exported)
    setattr(exported.config, EXPORT_KEY, {"format": "stock", **totals})
    check_same_logits(model, exported, "stock")
    exported.save_pretrained(staging)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    return ExportReport(
        format="stock",
        padded=entries,
        notes=[f"{config_class.__name__}: {heads} query heads, {kv_heads} KV heads, FFN {ffn} in every layer"],
        **totals,
    )


def stock_classes(model: PreTrainedModel) -> tuple[type, type]:
    """The stock transformers model class and config class of `model` (also for a reloaded `oto_*` model)."""
    model_type = model.config.model_type.removeprefix("oto_")
    model_class = next((c for c in type(model).__mro__ if c.__module__.startswith("transformers.models.")), None)
    if model_class is None or model_type not in CONFIG_MAPPING:
        raise ValueError(f"{type(model).__name__} is not a transformers model class with a stock config type.")
    return model_class, CONFIG_MAPPING[model_type]


def stock_config_values(model: PreTrainedModel, head_dim: int) -> dict[str, Any]:
    """The model's config as stock config arguments, with an explicit head_dim, the pruning summary and oto_hf's
    version."""
    values = {
        k: v for k, v in model.config.to_dict().items() if k not in PRUNED_ONLY_KEYS and not k.startswith("oto_")
    }
    values["head_dim"] = head_dim
    values["oto_hf_version"] = __version__
    summary = pruning_summary(model)
    if summary is not None:
        values[SUMMARY_KEY] = summary
    return values
