"""`oto_hf.bottlenecks`: the families whose removal disconnects the output from the input."""

from __future__ import annotations

import copy

import torch

from oto_hf.bottlenecks import bottleneck_families
from oto_hf.graph.discover import discover_groups
from tests.utils.data import TinyClassification
from tests.utils.train_tiny import tiny_model


def test_bottleneck_families_are_the_pooler_not_the_residual_blocks():
    model = tiny_model(dropout=0.0)
    inputs = {"input_ids": TinyClassification(size=2).input_ids}
    groups = discover_groups(model, inputs)
    pooler = [key for key in groups.families() if key[0][0].startswith("bert.pooler")]
    before = copy.deepcopy(model.state_dict())
    found = bottleneck_families(model, groups, inputs)
    assert len(pooler) == 1 and found == pooler  # emptying an FFN or a head family keeps the residual path
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights restored exactly
    # Nothing to perturb (no ids, no floating input): no check, no claim.
    assert bottleneck_families(model, groups, {"attention_mask": torch.ones(1, 4, dtype=torch.long)}) == []


def _lengths_seen(model: torch.nn.Module) -> tuple[list[tuple[int, ...]], torch.utils.hooks.RemovableHandle]:
    seen: list[tuple[int, ...]] = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    return seen, handle


def test_long_inputs_are_checked_on_one_short_example_with_the_same_result():
    model = tiny_model(dropout=0.0)
    ids = torch.randint(1, model.config.vocab_size, (3, 100), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    groups = discover_groups(model, inputs)
    seen, handle = _lengths_seen(model)
    try:
        short = bottleneck_families(model, groups, inputs, max_tokens=16)
    finally:
        handle.remove()
    assert set(seen) == {(1, 16), (2, 16)}  # one example, 16 tokens; with its perturbed copy, one batch of two
    assert short == bottleneck_families(model, groups, inputs, max_tokens=1000) != []


def test_a_model_that_refuses_short_inputs_is_checked_on_the_full_ones():
    model = tiny_model(dropout=0.0)
    inputs = {"input_ids": TinyClassification(size=2).input_ids}
    groups = discover_groups(model, inputs)
    full_length = inputs["input_ids"].shape[1]

    def needs_full_length(module, args, kwargs):
        if kwargs["input_ids"].shape[1] != full_length:
            raise ValueError("this model runs on a fixed sequence length")

    handle = model.register_forward_pre_hook(needs_full_length, with_kwargs=True)
    try:
        found = bottleneck_families(model, groups, inputs, max_tokens=2)
    finally:
        handle.remove()
    assert found == [key for key in groups.families() if key[0][0].startswith("bert.pooler")]
