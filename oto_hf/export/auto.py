"""The `"auto"` export format: the stock config when it can express the pruned widths, else an `oto_<type>` config.

An `oto_<type>` folder records every pruned shape and ships `oto_hf/models/pruned.py` beside the weights, so it loads
with the Auto classes after `import oto_hf`, or anywhere with `trust_remote_code=True`; serving engines do not load it
(see the `"stock"` and `"decilm"` formats).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from .._version import __version__
from ..graph.groups import KV_HEAD
from ..models import model_classes_for, no_op, register_pruned_architecture
from ..models import pruned as pruned_module
from ..models.no_op import ERASED_KEY
from ..models.pruned import MODULE_ATTRIBUTES_KEY, TENSOR_SHAPES_KEY, get_module_attribute
from ..record import SUMMARY_KEY, PruningRecord
from ..subnet import FFN_CONFIG_KEYS, HEAD_CONFIG_KEYS
from .report import ExportReport


def write_auto(model: PreTrainedModel, staging: Path, tokenizer: Any = None) -> ExportReport:
    """Write `model` as the stock config if it can express the pruned widths, else as an `oto_<type>` folder."""
    config, architectures = config_for_saving(model)
    # The weights are written under the model's own config, so that their keys are exactly those the stock class
    # writes (transformers renames some keys per model type); then the pruned config replaces config.json.
    model.save_pretrained(staging)
    written = json.loads((staging / "config.json").read_text(encoding="utf-8"))
    config.to_json_file(staging / "config.json")
    kept = {key: written[key] for key in ("architectures", "dtype") if key in written}
    if architectures is not None:
        _write_remote_code(staging, model, config)
        kept["architectures"] = architectures
    _update_json(staging / "config.json", kept)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    note = f"config type {config.model_type}"
    if architectures is not None:
        note += " (loads with the Auto classes after `import oto_hf`, or with `trust_remote_code=True`)"
    return ExportReport(format="auto", notes=[note])


def config_for_saving(model: PreTrainedModel) -> tuple[Any, list[str] | None]:
    """The config to write, and the pruned class names for `architectures` (None when the stock config is used)."""
    record = PruningRecord.from_model_or_config(model)
    base_config = model.config
    config = copy.deepcopy(base_config)
    config.oto_hf_version = __version__
    if record is None:
        return config, None
    summary = dataclasses.replace(record, dense_config=record.dense_config or dense_config_of(base_config))
    # Nothing sliced or erased (a subnet that kept every group, or a reloaded model): as it is.
    if not record.tensor_shapes and not getattr(base_config, ERASED_KEY, None):
        setattr(config, SUMMARY_KEY, summary.to_dict(shapes=False))
        return config, None
    stock = _stock_config(model, record)
    if stock is not None:
        stock.oto_hf_version = __version__
        setattr(stock, SUMMARY_KEY, summary.to_dict(shapes=False))
        return stock, None
    model_type = base_config.model_type.removeprefix("oto_")
    config_class = register_pruned_architecture(model_type)
    values = {k: v for k, v in base_config.to_dict().items() if k not in ("model_type", "transformers_version")}
    config = config_class(**values)
    # A model loaded from an `oto_*` folder and pruned again keeps the shapes its config already recorded.
    shapes = {**(getattr(base_config, TENSOR_SHAPES_KEY, None) or {}), **_relative_names(model, record.tensor_shapes)}
    attributes = {
        name: dict(values) for name, values in (getattr(base_config, MODULE_ATTRIBUTES_KEY, None) or {}).items()
    }
    for name, values in _relative_names(model, record.module_attributes, modules=True).items():
        attributes.setdefault(name, {}).update(values)
    setattr(config, TENSOR_SHAPES_KEY, shapes)
    setattr(config, MODULE_ATTRIBUTES_KEY, attributes)
    config.oto_hf_version = __version__
    setattr(config, SUMMARY_KEY, summary.to_dict(shapes=False))
    module = _remote_module_name(model_type)
    classes = model_classes_for(model_type)
    config.auto_map = {"AutoConfig": f"{module}.{config_class.__name__}"}
    config.auto_map.update({auto: f"{module}.OTO{name}" for auto, name in classes.items()})
    return config, [f"OTO{type(model).__name__.removeprefix('OTO')}"]


def pruning_summary(model: PreTrainedModel) -> dict[str, Any] | None:
    """The pruning record as written into a config (without tensor shapes), with the unpruned config in it."""
    record = PruningRecord.from_model_or_config(model)
    if record is None:
        return None
    dense = record.dense_config or dense_config_of(model.config)
    return dataclasses.replace(record, dense_config=dense).to_dict(shapes=False)


def dense_config_of(config: Any) -> dict[str, Any]:
    """The unpruned config, for `dense_reference` and cards of the reloaded model."""
    return {k: v for k, v in config.to_dict().items() if not k.startswith("oto_") and k != "auto_map"}


def _stock_config(model: PreTrainedModel, record: PruningRecord) -> Any | None:
    """A stock config whose model has exactly the pruned shapes, if uniform widths allow one."""
    layers = record.layers
    if any(layer.kind == "channel" and layer.removed for layer in layers):
        return None
    candidate = copy.deepcopy(model.config)
    nested = any(layer.kind == KV_HEAD for layer in layers)  # GQA: KV heads are groups of their own
    query_keys = tuple(key for key in HEAD_CONFIG_KEYS if key != "num_key_value_heads") if nested else HEAD_CONFIG_KEYS
    plans = (("neuron", FFN_CONFIG_KEYS), ("head", query_keys), (KV_HEAD, ("num_key_value_heads",)))
    for kind, keys in plans:
        families = [layer for layer in layers if layer.kind == kind]
        if not any(f.removed for f in families):
            continue
        if len({(f.kept, f.total) for f in families}) != 1:
            return None
        kept, total = families[0].kept, families[0].total
        if kind != "neuron":
            head_dim = getattr(candidate, "head_dim", None) or candidate.hidden_size // candidate.num_attention_heads
            for key in keys:
                value = getattr(candidate, key, None)
                if isinstance(value, int) and value * kept % total == 0:
                    setattr(candidate, key, value * kept // total)
            candidate.head_dim = head_dim
        else:
            matched = [key for key in keys if key in candidate.to_dict() and getattr(candidate, key) in (total, None)]
            if not matched:
                return None
            for key in matched:
                setattr(candidate, key, kept)
    return candidate if _matches(model, candidate, record) else None


def _matches(model: PreTrainedModel, config: Any, record: PruningRecord) -> bool:
    """Whether the stock class built from `config` has the pruned model's shapes and width attributes."""
    try:
        with torch.device("meta"):
            fresh = type(model)(config)
    except Exception:  # the candidate config is not valid for this class
        return False
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if {name: tuple(t.shape) for name, t in fresh.state_dict().items()} != expected:
        return False
    modules = dict(fresh.named_modules())
    for module_name, values in record.module_attributes.items():
        module = modules.get(module_name)
        for attr, value in values.items():
            current = get_module_attribute(module, attr) if module is not None else None
            if (list(current) if isinstance(current, tuple) else current) != value:
                return False
    return True


def _relative_names(model: PreTrainedModel, mapping: dict[str, Any], modules: bool = False) -> dict[str, Any]:
    """Strip the base model prefix so any Auto class of the architecture can resolve the names."""
    prefix = getattr(model, "base_model_prefix", "")
    has_base = bool(prefix) and hasattr(model, prefix)
    result = {}
    for name, value in mapping.items():
        if has_base and (name.startswith(prefix + ".") or (modules and name == prefix)):
            name = name[len(prefix) + 1 :]
        result[name] = value
    return result


def _remote_module_name(model_type: str) -> str:
    return f"modeling_oto_{model_type.replace('-', '_')}"


def _write_remote_code(folder: Path, model: PreTrainedModel, config: Any) -> None:
    """Copy `oto_hf/models/pruned.py` (and `no_op.py`, which it imports) and name the classes, so
    `trust_remote_code=True` works without oto_hf."""
    model_type = config.model_type.removeprefix("oto_")
    base_config = type(config).__mro__[1].__name__
    classes = sorted(set(model_classes_for(model_type).values()))
    lines = [
        "",
        "",
        "# ---- classes of this checkpoint (written by oto_hf.save_pruned) ----",
        f"from transformers import {', '.join([base_config, *classes])}  # noqa: E402",
        "",
        f"OTO{base_config} = pruned_config_class({base_config})",
    ]
    lines += [f"OTO{name} = pruned_model_class({name}, OTO{base_config})" for name in classes]
    source = Path(pruned_module.__file__).read_text(encoding="utf-8")
    (folder / "no_op.py").write_text(Path(no_op.__file__).read_text(encoding="utf-8"), encoding="utf-8")
    (folder / f"{_remote_module_name(model_type)}.py").write_text(source + "\n".join(lines) + "\n", encoding="utf-8")


def _update_json(path: Path, values: dict[str, Any]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(values)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
