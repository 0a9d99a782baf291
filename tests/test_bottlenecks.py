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
