"""GroupSet.select (a subset of groups, renumbered)."""

import pytest
import torch
from transformers import BertConfig, BertModel

from oto_hf import construct_subnet, discover_groups
from tests.utils.asserts import max_output_diff
from tests.utils.tiny_models import TEXT


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BertModel(BertConfig(**TEXT)).eval()


@pytest.fixture(scope="module")
def groups(model):
    return discover_groups(model)


def test_select_by_kind_ids_and_predicate(groups):
    heads = groups.select(kinds=["head"])
    assert heads.counts() == {"head": 8} and [g.id for g in heads] == list(range(8))
    assert [g.slices for g in heads] == [g.slices for g in groups if g.kind == "head"]

    layer_one = groups.select(kinds="neuron", where=lambda group: group.layer == 1)
    assert len(layer_one) == 37 and {g.layer for g in layer_one} == {1}
    assert [g.id for g in layer_one] == list(range(37))

    picked = groups.select(ids=[40, 3, 3])
    assert [(g.id, g.kind, g.module) for g in picked] == [
        (0, groups[3].kind, groups[3].module),
        (1, groups[40].kind, groups[40].module),
    ]
    assert picked.unprunable == groups.unprunable and picked.example_inputs is groups.example_inputs


def test_select_copies_and_leaves_the_original_alone(groups):
    ids = [g.id for g in groups]
    selected = groups.select(where=lambda group: group.kind == "neuron")
    assert selected[0] is not groups[selected[0].id] and [g.id for g in groups] == ids
    assert len(groups.select(kinds=["channel"])) == 0


def test_selected_groups_prune_like_the_originals(model, groups):
    neurons = groups.select(kinds=["neuron"])
    pruned_by_subset = construct_subnet(model, neurons, [0, 40])
    originals = [g.id for g in groups if g.kind == "neuron"]
    pruned_by_all = construct_subnet(model, groups, [originals[0], originals[40]])
    assert pruned_by_subset.oto_pruning.tensor_shapes == pruned_by_all.oto_pruning.tensor_shapes
    assert max_output_diff(pruned_by_subset, pruned_by_all, groups.example_inputs) == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(kinds=["filter"]), ValueError, r"Unknown group kinds \['filter'\]"),
        (dict(ids=[999]), ValueError, r"Unknown group ids \[999\]"),
    ],
)
def test_select_rejects_unknown_kinds_and_ids(groups, kwargs, error, match):
    with pytest.raises(error, match=match):
        groups.select(**kwargs)
