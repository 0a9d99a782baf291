"""Model size figures: parameters and FLOPs (via `torch.utils.flop_counter`), and the outputs they are counted on."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .utils import as_args_kwargs, eval_mode


def count_parameters(model: nn.Module) -> int:
    """Number of parameter entries, counting tied parameters once."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, example_inputs: Any) -> int:
    """FLOPs of one eval-mode forward on `example_inputs`, as counted by `torch.utils.flop_counter.FlopCounterMode`."""
    args, kwargs = as_args_kwargs(example_inputs)
    counter = FlopCounterMode(display=False)
    with eval_mode(model), counter:
        model(*args, **kwargs)
    return int(counter.get_total_flops())


def forward_outputs(
    model: nn.Module, example_inputs: Any, count: bool = False
) -> tuple[list[torch.Tensor], int | None]:
    """Floating-point output tensors of an eval-mode forward (flattened), and its FLOPs when `count` is set."""
    args, kwargs = as_args_kwargs(example_inputs)
    counter = FlopCounterMode(display=False) if count else None
    with torch.no_grad(), eval_mode(model):
        if counter is None:
            outputs = model(*args, **kwargs)
        else:
            with counter:
                outputs = model(*args, **kwargs)
    # Private: `torch.utils._pytree`, which flattens transformers' ModelOutput (torch 2.13, transformers 5.24,
    # pinned by tests/test_private_apis.py).
    leaves = [
        t for t in torch.utils._pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]
    return leaves, (int(counter.get_total_flops()) if counter is not None else None)
