"""Erased sub-blocks at run time: the stand-in modules of a residual branch (or whole block) that OTO erased.

A saved folder lists its erased modules in `config.json` under `oto_erased`, one entry per erased operator:
`{"layer": 3, "kind": "attention", "modules": {"layers.3.self_attn": {...}, "layers.3.input_layernorm": {...}}}`.
`resize_to_config` (`pruned.py`) puts the stand-ins in place before weights are loaded. `save_pruned` copies this file
beside the remote code, so it must import only torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ERASED_KEY = "oto_erased"
CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value", "layer_past")  # transformers 5.25 passes `cache`


class ErasedModule(nn.Module):
    """Stands in for a module of an erased branch: no parameters, no matmul.

    In `"zero"` mode it returns zeros shaped like the module's output (the branch adds nothing to the residual
    stream); in `"identity"` mode (a whole block) it returns its input. A tuple output keeps its length, with `None`
    after the first entry. An erased attention of a model with a key-value cache writes a one-byte placeholder per
    token for its keys and values: transformers reads the cache's length from its layers (layer 0's in
    `DynamicCache.get_seq_length`), so each layer must still count the tokens.

    Args:
        spec (`dict`): `mode` (`"zero"` or `"identity"`), `input` (position or name of the argument whose shape and
            dtype the output follows), `shape` (the output's sizes, `None` where it copies the input's size),
            `outputs` (length of a tuple output, `None` for a tensor), `cache_layer` (the cache layer of an erased
            attention, or `None`) and `attributes` (plain attributes of the replaced module that callers read).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        for name, value in spec.get("attributes", {}).items():
            setattr(self, name, value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        spec = self.spec
        where = spec["input"]
        reference = args[where] if isinstance(where, int) and where < len(args) else kwargs.get(where)
        if not isinstance(reference, torch.Tensor):
            raise TypeError(f"The erased module expected a tensor as argument {where!r}, got {type(reference)}.")
        if spec.get("cache_layer") is not None:
            # By keyword in most models, by position in some (GPT-2's blocks).
            values = [*(kwargs.get(name) for name in CACHE_ARGUMENTS), *args, *kwargs.values()]
            cache = next((v for v in values if hasattr(v, "update") and hasattr(v, "get_seq_length")), None)
            if cache is not None:
                placeholder = reference.new_zeros((reference.shape[0], 1, reference.shape[1], 1), dtype=torch.bool)
                cache.update(placeholder, placeholder, spec["cache_layer"])
        if spec["mode"] == "identity":
            output = reference
        else:
            size = [reference.shape[i] if n is None else n for i, n in enumerate(spec["shape"])]
            output = reference.new_zeros(size)
        return output if spec["outputs"] is None else (output, *([None] * (spec["outputs"] - 1)))

    def extra_repr(self) -> str:
        return f"mode={self.spec['mode']!r}"


def replace_module(model: nn.Module, path: str, spec: dict[str, Any]) -> None:
    """Put an `ErasedModule` with `spec` at `path` (relative to the base model when the model wraps one)."""
    modules = dict(model.named_modules())
    prefix = getattr(model, "base_model_prefix", "")
    found = next((p for p in (f"{prefix}.{path}" if prefix else None, path) if p and p in modules), None)
    if found is None:
        raise ValueError(
            f"The config erases module {path!r}, which {type(model).__name__} does not have: the folder was saved "
            "from a different architecture."
        )
    parent, _, name = found.rpartition(".")
    setattr(modules[parent], name, ErasedModule(spec))


def erase_modules_from_config(model: nn.Module, config: Any) -> None:
    """Replace every module the config's `oto_erased` entries list (nothing if it has none)."""
    for entry in getattr(config, ERASED_KEY, None) or []:
        for path, spec in entry["modules"].items():
            replace_module(model, path, spec)
