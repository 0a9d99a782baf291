"""Small helpers shared across oto_hf: eval mode, example inputs as call arguments (and cut to one short example),
and moving inputs to a device."""

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


def has_inputs(example_inputs: Any) -> bool:
    """Whether `example_inputs` holds anything to run the model on (a tensor, or a non-empty dict, tuple or list)."""
    if example_inputs is None:
        return False
    return len(example_inputs) > 0 if isinstance(example_inputs, (dict, tuple, list)) else True


def to_device(inputs: Any, device: torch.device | str) -> Any:
    """`inputs` with every tensor in it (nested in dicts, lists, tuples) moved to `device`."""
    # Private: `torch.utils._pytree` (checked against torch 2.13, pinned by tests/test_private_apis.py).
    return torch.utils._pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, inputs)


def one_short_example(inputs: Any, max_tokens: int) -> Any:
    """The first example of a dict of batched tensors, with (batch, sequence) tensors cut to `max_tokens` tokens.

    Only dicts whose tensors all share the batch size are cut, and the sequence only when every tensor that has the
    sequence length has it as its second and last dim (ids, masks, positions); otherwise `inputs` is returned.
    """
    if not isinstance(inputs, dict) or not inputs:
        return inputs
    tensors = {name: value for name, value in inputs.items() if isinstance(value, torch.Tensor) and value.dim() > 0}
    ids = inputs.get("input_ids")
    if not tensors or len({value.shape[0] for value in tensors.values()}) != 1:
        return inputs
    length = ids.shape[1] if isinstance(ids, torch.Tensor) and ids.dim() == 2 else None
    if length is not None and any(
        length in value.shape[1:] and (value.dim() != 2 or value.shape[1] != length) for value in tensors.values()
    ):
        length = None  # e.g. a 4-D attention mask: keep the sequence whole
    cut = slice(0, max_tokens) if length is not None and length > max_tokens else slice(None)

    def shorten(value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return value
        return value[:1, cut] if value.dim() == 2 and value.shape[1] == length else value[:1]

    short = {name: shorten(value) for name, value in inputs.items()}
    unchanged = all(
        not isinstance(value, torch.Tensor) or value.shape == inputs[name].shape for name, value in short.items()
    )
    return inputs if unchanged else short
