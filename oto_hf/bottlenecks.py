"""Families whose removal would disconnect a model's output from its input, found by running the model.

Removing every group of an FFN or of an attention layer is exact and harmless in a residual network: the block then
adds a constant. Removing every unit of a layer that the whole signal goes through (the dense layer of a classification
head's pooler, every channel of a plain conv stage) makes the output constant: the model collapses to chance. Such a
family must keep at least one group (`DHSPG(never_empty=...)`, which `OTOTrainer` fills from this module).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .graph.families import FamilyKey
from .stats import forward_outputs
from .utils import one_short_example

logger = logging.getLogger(__name__)


@torch.no_grad()
def bottleneck_families(
    model: nn.Module, groups, example_inputs: Any, seed: int = 0, max_tokens: int = 32
) -> list[FamilyKey]:
    """Keys of the families whose groups, all zero, make the model's outputs the same for two different inputs.

    The model runs in eval mode, once per family, on `example_inputs` and a perturbed copy (token ids redrawn,
    floating inputs re-sampled) batched together; weights are restored exactly afterwards. Which families disconnect
    the output is a property of the architecture, not of the input's length, so the check runs on the first example
    cut to its first `max_tokens` tokens (on the full inputs if the model refuses the shorter ones). Returns `[]`
    when the inputs cannot be perturbed or the dense model's outputs do not depend on them.

    Args:
        model (`nn.Module`): the model the groups were discovered on.
        groups (`GroupSet`): its groups.
        example_inputs: inputs as for `discover_groups` (a dict of tensors, a tensor or a tuple).
        seed (`int`, *optional*, defaults to `0`): seed of the perturbation.
        max_tokens (`int`, *optional*, defaults to `32`): sequence length of the check's inputs.

    Example:
    ```python
    >>> bottleneck_families(bert_for_classification, groups, inputs)  # the pooler's dense layer
    [(('bert.pooler.dense.bias', 0), ('bert.pooler.dense.weight', 0), ('classifier.weight', 1))]
    ```
    """
    was_training = model.training
    model.eval()
    try:
        example_inputs = _runnable_short_inputs(model, example_inputs, max_tokens)
        other = _perturbed(example_inputs, torch.Generator().manual_seed(seed))
        if other is None:
            logger.info("No input to perturb: bottleneck families are not checked.")
            return []
        if _same(model, example_inputs, other):
            return []
        found = []
        params = dict(model.named_parameters(remove_duplicate=False))
        for key, members in groups.families().items():
            saved = {name: params[name].detach().clone() for name, _ in key}
            groups.zero_(model, [group.id for group in members])
            try:
                if _same(model, example_inputs, other):
                    found.append(key)
            finally:
                for name, value in saved.items():
                    params[name].data.copy_(value)
        return found
    finally:
        model.train(was_training)


def _runnable_short_inputs(model: nn.Module, inputs: Any, max_tokens: int) -> Any:
    """`inputs` cut to one example of at most `max_tokens` tokens, if the model runs on that; else `inputs`."""
    short = one_short_example(inputs, max_tokens)
    if short is inputs:
        return inputs
    try:
        forward_outputs(model, short)
    except Exception as error:  # a model that needs its full input shape (e.g. a fixed sequence length)
        logger.debug("Checking bottlenecks on the full example inputs: the shortened ones fail (%s).", error)
        return inputs
    return short


def _same(model: nn.Module, first: Any, second: Any) -> bool:
    """Whether the main output (the first floating tensor: logits, start logits, last hidden state) is unchanged.

    Two dicts of single examples run as one batch of two (the weights are read once); anything else runs twice.
    """
    stacked = _stacked(first, second)
    if stacked is not None:
        output = forward_outputs(model, stacked)[0][0]
        if output.dim() > 0 and output.shape[0] == 2:
            return torch.allclose(output[0], output[1], rtol=1e-5, atol=1e-6)
    output_a = forward_outputs(model, first)[0][0]
    output_b = forward_outputs(model, second)[0][0]
    return output_a.shape == output_b.shape and torch.allclose(output_a, output_b, rtol=1e-5, atol=1e-6)


def _stacked(first: Any, second: Any) -> dict[str, Any] | None:
    """`first` and `second` as one batch, when both are dicts of one-example tensors of equal shapes."""
    if not isinstance(first, dict) or not isinstance(second, dict) or first.keys() != second.keys():
        return None
    tensors = [(first[k], second[k]) for k in first if isinstance(first[k], torch.Tensor)]
    if not tensors or any(a.dim() == 0 or a.shape[0] != 1 or a.shape != b.shape for a, b in tensors):
        return None
    return {k: torch.cat([v, second[k]]) if isinstance(v, torch.Tensor) else v for k, v in first.items()}


def _perturbed(inputs: Any, generator: torch.Generator) -> Any:
    """A copy of `inputs` with token ids redrawn and floating tensors re-sampled; None when nothing can change."""
    changed = False

    def perturb(name: str, value: Any) -> Any:
        nonlocal changed
        if not isinstance(value, torch.Tensor):
            return value
        if value.is_floating_point() and "mask" not in name:
            changed = True
            noise = torch.randn(value.shape, generator=generator).to(value.device, value.dtype)
            return value + noise * (value.std() if value.numel() > 1 else 1.0)
        if name.endswith("input_ids") and value.numel():
            changed = True
            high = max(int(value.max()) + 1, 2)
            redrawn = torch.randint(0, high, value.shape, generator=generator).to(value.device, value.dtype)
            return torch.where(redrawn == value, (redrawn + 1) % high, redrawn)
        return value

    if isinstance(inputs, dict):
        out = {name: perturb(name, value) for name, value in inputs.items()}
    elif isinstance(inputs, (tuple, list)):
        out = type(inputs)(perturb(_positional_name(value), value) for value in inputs)
    else:
        out = perturb(_positional_name(inputs), inputs)
    return out if changed else None


def _positional_name(value: Any) -> str:
    """Inputs passed by position: integer tensors are taken as token ids."""
    is_ids = isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dtype != torch.bool
    return "input_ids" if is_ids else "x"
