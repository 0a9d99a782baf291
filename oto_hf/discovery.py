"""`discover_groups` as users call it: the graph's groups (`graph/discover.py`), checked by slicing a copy of the model
(`subnet.unremovable_families`). It sits above both layers, so that the graph layer never imports construction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from .graph import discover
from .graph.groups import GroupSet
from .subnet import unremovable_families


def discover_groups(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    prune_kinds: Iterable[str] | None = None,
    show_progress: bool | None = None,
    probe: bool = True,
) -> GroupSet:
    """Find the zero-invariant groups of `model` from its `torch.export` graph.

    Channel identity is propagated from producers (linear, conv, embedding) through shape-preserving and elementwise
    ops, reshapes into heads, attention, residual adds, concatenation and normalisation to the consumers. Whatever
    cannot be proven removable (an unknown op, a norm over the channels, a model output, the residual stream) is
    listed in `GroupSet.unprunable` with the reason.

    Args:
        model (`nn.Module`): any module `torch.export` can trace; it may live on the `meta` device.
        example_inputs (`dict`, `tuple` or `torch.Tensor`, *optional*): inputs for tracing, e.g. a tokenizer's output.
            Derived from the model's config when omitted (token ids for text models, `pixel_values` for vision
            models). A model that can return a key-value cache is traced with `use_cache=False` unless they set it.
        prune_kinds (`Iterable[str]`, *optional*, defaults to all): which of `"head"`, `"neuron"`, `"channel"` to
            return (as `OTOTrainingArguments.prune_kinds`).
        show_progress (`bool`, *optional*): show a progress bar while propagating; by default only for large graphs
            (over 1,000 nodes). `transformers.utils.logging.disable_progress_bar()` turns it off.
        probe (`bool`, *optional*, defaults to `True`): slice a copy of the model (one or two groups per layer) and
            compare its outputs with the zero-masked model; groups whose removal breaks the forward (a width the
            model computes from something else) are moved to `unprunable`. Skipped on the `meta` device.

    Returns:
        `GroupSet`: the groups, in graph order, and the unprunable components with their reasons.

    Example:
    ```python
    >>> from transformers import BertConfig, BertModel
    >>> from oto_hf import discover_groups
    >>> model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37))
    >>> groups = discover_groups(model)
    >>> groups.counts()
    {'head': 8, 'neuron': 74}
    ```
    """
    return discover.discover_groups(
        model,
        example_inputs,
        prune_kinds=prune_kinds,
        show_progress=show_progress,
        probe=unremovable_families if probe else None,
    )
