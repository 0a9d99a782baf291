"""Small helpers shared across oto_hf: eval mode, example inputs as call arguments, and moving inputs to a device."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode, then restore each submodule's own training flag."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def as_args_kwargs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Accept a dict (keyword arguments), a tuple/list (positional) or a single tensor."""
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    raise TypeError(
        f"`example_inputs` must be a dict of keyword arguments, a tuple of positional arguments or a tensor, got "
        f"{type(example_inputs).__name__}."
    )


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def to_device(inputs: Any, device: torch.device | str) -> Any:
    """`inputs` with every tensor in it (nested in dicts, lists, tuples) moved to `device`."""
    # Private: `torch.utils._pytree` (checked against torch 2.13, pinned by tests/test_private_apis.py).
    return torch.utils._pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, inputs)
