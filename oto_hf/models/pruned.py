"""Pruned variants of transformers models: the stock architecture, resized to the shapes its config records.

`save_pruned` copies this file next to the weights (with a few lines that name the classes), and `no_op.py` beside it,
so a pruned folder loads with `trust_remote_code=True` where oto_hf is not installed. It must therefore import only
torch, transformers and `no_op.py`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .no_op import erase_modules_from_config

TENSOR_SHAPES_KEY = "oto_tensor_shapes"
MODULE_ATTRIBUTES_KEY = "oto_module_attributes"
CONFIG_PREFIX = "config."  # a recorded attribute `config.<key>`: the key in the module's own copy of the config


def pruned_config_class(base: type) -> type:
    """A subclass of the config class `base` with `model_type = "oto_" + base.model_type`."""
    attributes = {"model_type": f"oto_{base.model_type}", "__module__": __name__}
    config_class = type(f"OTO{base.__name__}", (base,), attributes)
    _share_key_renames(config_class.model_type, base.model_type)
    return config_class


def pruned_model_class(base: type, config_class: type) -> type:
    """A subclass of the model class `base` that builds the stock model, then resizes it as its config says."""
    model_class = type(
        f"OTO{base.__name__}", (PrunedModelMixin, base), {"config_class": config_class, "__module__": __name__}
    )
    _share_key_renames(model_class.__name__, base.__name__)
    return model_class


def _share_key_renames(name: str, stock_name: str) -> None:
    """Give `name` (an `oto_*` model type or `OTO*` class) the checkpoint key renames of the stock one.

    transformers renames some checkpoint keys per model type or class (`transformers.conversion_mapping`, e.g.
    GPT-NeoX's output embedding) when saving and loading. A pruned folder is saved by the stock class, so its keys
    are the stock checkpoint's; the pruned classes must read them back the same way.
    """
    # Private: `transformers.conversion_mapping` (checked against transformers 5.24, pinned by
    # tests/test_private_apis.py, which fails if this import starts to fail).
    try:  # transformers >= 5.0
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except ImportError:
        return
    mapping = get_checkpoint_conversion_mapping(stock_name)
    if mapping is not None:
        register_checkpoint_conversion_mapping(name, mapping, overwrite=True)


class PrunedModelMixin:
    """Resizes the freshly built stock model to the pruned shapes before weights are loaded into it."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        resize_to_config(self, config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
        """The stock `from_pretrained`, which raises if a weight would be left missing or unused."""
        want_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except RuntimeError as error:
            mismatches = _checkpoint_mismatches(cls, pretrained_model_name_or_path, kwargs.get("config"))
            if not mismatches:
                raise
            shown = "; ".join(
                f"{name}: checkpoint {found}, config {expected}" for name, found, expected in mismatches[:5]
            )
            raise ValueError(
                f"The weights in {pretrained_model_name_or_path} do not match the pruned shapes recorded in its "
                f"config.json ({len(mismatches)} tensors differ: {shown}). The folder was probably edited or mixed "
                "with another checkpoint; save it again with `oto_hf.save_pruned`."
            ) from error
        _check_loading_info(model, info, pretrained_model_name_or_path)
        return (model, info) if want_info else model


def _check_loading_info(model: nn.Module, info: dict[str, Any], folder: Any) -> None:
    """A pruned checkpoint must fill every weight of its own class: nothing missing, nothing left over.

    Loading another class of the architecture may only add or drop a task head (weights outside the base model),
    as the stock classes do.
    """
    missing, unexpected = sorted(info.get("missing_keys", ())), sorted(info.get("unexpected_keys", ()))
    if not missing and not unexpected:
        return
    saved_as = getattr(model.config, "architectures", None) or []
    prefix = getattr(model, "base_model_prefix", "")
    has_base = bool(prefix) and hasattr(model, prefix)
    if type(model).__name__ not in saved_as:
        missing = [k for k in missing if has_base and k.startswith(prefix + ".")]  # a new task head may be missing
        unexpected = [k for k in unexpected if has_base]  # a base class may leave the task head unused
    if missing or unexpected:
        raise ValueError(
            f"Loading the pruned checkpoint {folder} into {type(model).__name__} would leave weights at random "
            f"initialisation: missing from the checkpoint {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"in the checkpoint but unused {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}. The checkpoint "
            "keys do not match this class (transformers renames some keys per model type when saving and loading). "
            "Save the model again with `oto_hf.save_pruned`, and load it with the class it was saved from."
        )


@torch.no_grad()
def resize_to_config(model: nn.Module, config: Any) -> None:
    """Give every tensor the shape in `config.oto_tensor_shapes` and set `config.oto_module_attributes`, after putting
    stand-ins in place of the modules `config.oto_erased` lists (`no_op.py`)."""
    erase_modules_from_config(model, config)
    shapes: dict[str, list[int]] = getattr(config, TENSOR_SHAPES_KEY, None) or {}
    attributes: dict[str, dict[str, Any]] = getattr(config, MODULE_ATTRIBUTES_KEY, None) or {}
    modules = dict(model.named_modules())
    resized: dict[int, torch.Tensor] = {}
    found = 0
    for name, shape in shapes.items():
        module_name, _, attr = name.rpartition(".")
        module = modules.get(_resolve(model, module_name, modules))
        # Private: `nn.Module._parameters` / `_buffers` (torch 2.13, pinned by tests/test_private_apis.py).
        if module is None or (attr not in module._parameters and attr not in module._buffers):
            continue  # a head this class does not have (e.g. loading a task model's folder with AutoModel)
        found += 1
        is_param = attr in module._parameters
        old = (module._parameters if is_param else module._buffers)[attr]
        if tuple(old.shape) == tuple(shape):
            continue
        if id(old) not in resized:
            new = old[tuple(slice(0, n) for n in shape)].clone()
            resized[id(old)] = nn.Parameter(new, requires_grad=old.requires_grad) if is_param else new
        (module._parameters if is_param else module._buffers)[attr] = resized[id(old)]
    if shapes and not found:
        raise ValueError(
            f"The config records pruned shapes for tensors that {type(model).__name__} does not have (e.g. "
            f"{next(iter(shapes))!r}). The folder was saved from a different architecture."
        )
    for module_name, values in attributes.items():
        module = modules.get(_resolve(model, module_name, modules))
        if module is not None:
            for attr, value in values.items():
                set_module_attribute(module, attr, tuple(value) if isinstance(value, list) else value)


def set_module_attribute(module: nn.Module, attr: str, value: Any) -> None:
    """`setattr`, where `config.<key>` gives the module a `LayerConfig` with its own value of `key`."""
    key = attr.removeprefix(CONFIG_PREFIX)
    if key == attr:
        setattr(module, attr, value)
        return
    config = module.config
    if isinstance(config, LayerConfig):
        module.config = LayerConfig(config._shared, **{**config._widths, key: value})
    else:
        module.config = LayerConfig(config, **{key: value})


class LayerConfig:
    """The model's config as one layer sees it: its own widths, everything else read from the shared config.

    Some layers read their widths from the config at every forward (the split points of a fused qkv projection,
    Phi-3) or rebuild submodules from it. After non-uniform pruning each such layer needs its own head count or
    FFN width, while settings changed later on the model's config (e.g. `set_attn_implementation`) must still reach
    it.
    """

    def __init__(self, shared: Any, **widths: Any) -> None:
        object.__setattr__(self, "_shared", shared)
        object.__setattr__(self, "_widths", widths)

    def __getattr__(self, name: str) -> Any:
        if name in ("_shared", "_widths") or name.startswith("__"):  # not set yet (copying, unpickling)
            raise AttributeError(name)
        if name in self._widths:
            return self._widths[name]
        return getattr(self._shared, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._widths:
            self._widths[name] = value
        else:
            setattr(self._shared, name, value)

    def __repr__(self) -> str:
        return f"LayerConfig({type(self._shared).__name__}, {self._widths})"


def get_module_attribute(module: nn.Module, attr: str) -> Any:
    key = attr.removeprefix(CONFIG_PREFIX)
    return getattr(getattr(module, "config", None), key, None) if key != attr else getattr(module, attr, None)


def _resolve(model: nn.Module, name: str, modules: dict[str, nn.Module]) -> str | None:
    """Names are stored relative to the base model; the loading class may wrap it (or be it)."""
    prefix = getattr(model, "base_model_prefix", "")
    candidates = [f"{prefix}.{name}" if name else prefix, name] if prefix else [name]
    for candidate in candidates:
        if candidate in modules:
            return candidate
    return None


def _checkpoint_mismatches(cls: type, folder: Any, config: Any = None) -> list[tuple[str, list[int], list[int]]]:
    """(name, shape in the checkpoint, shape the config implies) for every tensor that differs."""
    from pathlib import Path

    from safetensors import safe_open

    path = Path(str(folder))
    if not path.is_dir():
        return []
    config = config if config is not None else cls.config_class.from_pretrained(path)
    with torch.device("meta"):
        model = cls(config)
    expected = {name: list(t.shape) for name, t in model.state_dict().items()}
    prefix = getattr(model, "base_model_prefix", "")
    mismatches = []
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                found = list(handle.get_slice(name).get_shape())
                want = expected.get(name, expected.get(f"{prefix}.{name}"))
                if want is not None and want != found:
                    mismatches.append((name, found, want))
    return mismatches
