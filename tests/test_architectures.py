"""Every architecture of `tests/utils/tiny_models.CASES` through the whole pipeline: discover -> valid groups ->
construct_subnet == zero-masked model -> save_pruned -> Auto-class reload -> equal outputs -> a few DHSPG steps."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import pytest
import torch
from torch import nn

from oto_hf import GroupSet, discover_groups
from tests.utils.asserts import (
    assert_groups_valid,
    assert_save_load_roundtrip,
    assert_trains,
    assert_zero_invariant,
    random_nonuniform_ids,
)
from tests.utils.tiny_models import CASE_IDS, CASES, ArchCase


@dataclass
class Discovered:
    """One case's dense model, its groups and a random non-uniform mask of them."""

    case: ArchCase
    model: nn.Module
    groups: GroupSet
    ids: list[int]

    @cached_property
    def pruned(self) -> nn.Module:
        """The subnet without the masked groups, built (and checked) once for the tests that need it."""
        return assert_zero_invariant(self.model, self.groups, self.ids)


@pytest.fixture(scope="module", params=CASES, ids=CASE_IDS)
def arch(request) -> Discovered:
    """Discovered once per case for the whole module; tests copy the model before changing it."""
    case = request.param
    torch.manual_seed(0)
    model = case.build().eval()
    groups = discover_groups(model)
    return Discovered(case, model, groups, random_nonuniform_ids(groups, seed=3))


def test_groups_match_the_config(arch):
    assert_groups_valid(arch.groups, arch.model, expected=arch.case.expected, per_layer=arch.case.per_layer)


def test_subnet_equals_zero_masked_model(arch):
    pruned = arch.pruned  # built by assert_zero_invariant
    kept_widths = {layer.kept for layer in pruned.oto_pruning.layers if layer.total > 1}
    assert len(kept_widths) > 1, "the mask should give different widths to different layers"


def test_save_and_auto_reload(arch, tmp_path):
    loaded = assert_save_load_roundtrip(arch.pruned, tmp_path / "pruned", auto_class=arch.case.auto_class)
    assert type(loaded).__name__ == f"OTO{arch.case.model_class}"  # non-uniform widths need the OTO class


def test_trains(arch):
    assert_trains(arch.model, arch.groups, steps=3)
