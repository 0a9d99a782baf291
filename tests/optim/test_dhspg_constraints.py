"""DHSPG's family constraints: per-layer minimums, `max_family_sparsity`, `never_empty`, `uniform_widths`."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from oto_hf.optim import DHSPG
from oto_hf.optim.families import FamilyConstraints
from oto_hf.optim.selection import resolve_budget
from tests.utils.dhspg_toys import (
    FLOP_COSTS,
    NUM_GROUPS,
    TinyModel,
    group_state_is_zero,
    make,
    tiny_groups,
    train_step,
    train_without_host_sync,
)

# Aggressive settings: groups project naturally (and early) so that the caps have something to stop.
BOTH_MINIMUMS = {"min_heads_per_layer": 1, "min_neurons_per_layer": 1}
EAGER = {"variant": "sgd", "lr": 0.1, "lambda_": 1.0, "final_epsilon": 0.9}


def run(model, groups, optimizer, steps: int = 32) -> list[list[int]]:
    """Train, checking after every step that no family exceeds its quota; returns the per-family zero counts."""
    quotas = [family.max_zero for family in optimizer.families]
    history = []
    for step in range(steps):
        train_step(model, optimizer, step)
        counts = optimizer.family_zero_counts()
        assert all(c <= q for c, q in zip(counts, quotas)), f"step {step}: {counts} above the quotas {quotas}"
        history.append(counts)
    assert optimizer.zero_group_ids() == groups.zero_group_ids(model)
    assert group_state_is_zero(model, groups, optimizer, optimizer.zero_group_ids())
    return history


# ----------------------------------------------------------------------------- families


def test_families_are_computed_from_shared_tensors_and_read_only():
    _, groups, optimizer = make(target_sparsity=0.5)
    families = optimizer.families
    assert [(f.kind, f.size) for f in families] == [("head", 2), ("neuron", 12), ("head", 2), ("neuron", 12)]
    assert families[0].group_ids == (0, 1) and families[1].group_ids == tuple(range(2, 14))
    # The same families, in the same order, as the groups' own (`GroupSet.families`).
    expected = [(key, tuple(g.id for g in members)) for key, members in groups.families().items()]
    assert [(f.tensors, f.group_ids) for f in families] == expected
    for family in families:
        # Unconstrained: any number may be zero.
        assert family.min_kept == 0 and family.max_zero == family.size
    assert isinstance(families, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        families[0].max_zero = 0


def test_a_family_with_two_kinds_only_fails_under_constraints():
    model = TinyModel()
    groups = list(tiny_groups(model))
    groups[1] = dataclasses.replace(groups[1], kind="neuron")
    optimizer = DHSPG(model.parameters(), groups, model.named_parameters(), pruning_end_steps=10)
    assert optimizer.families[0].kind == "head" and optimizer.families[0].size == 2
    with pytest.raises(ValueError, match=r"Groups 0 \('head'\) and 1 \('neuron'\) slice the same tensors"):
        DHSPG(model.parameters(), groups, model.named_parameters(), pruning_end_steps=10, uniform_widths=True)


# ----------------------------------------------------------------------------- per-layer minimums


@pytest.mark.parametrize(
    "kwargs",
    [
        {**EAGER, "target_sparsity": 0.8, **BOTH_MINIMUMS},
        {**EAGER, "target_sparsity": 0.8, "min_heads_per_layer": 1, "lambda_schedule": "progressive"},
        {"variant": "adamw", "lr": 0.01, "lambda_": 5.0, "target_sparsity": 0.7, "min_heads_per_layer": 1},
        {**EAGER, "target_sparsity": 0.55, "sparsity_budget": "params", **BOTH_MINIMUMS},
        {"target_sparsity": 0.55, "sparsity_budget": "flops", "group_costs": FLOP_COSTS, **BOTH_MINIMUMS,
         "lambda_schedule": "progressive"},
    ],
    ids=["int", "dict-progressive", "adamw", "params", "flops-progressive"],
)  # fmt: skip
def test_per_layer_minimums_hold_at_every_step_and_the_target_is_met(kwargs):
    model, groups, optimizer = make(**kwargs)
    for family in optimizer.families:
        wanted = kwargs.get(f"min_{family.kind}s_per_layer", 0)
        assert family.min_kept == wanted and family.max_zero == family.size - wanted
    history = run(model, groups, optimizer)
    final = history[optimizer.pruning_end_steps - 1]
    assert history[-1] == final
    if kwargs.get("sparsity_budget", "groups") == "groups":
        assert (
            sum(final) == optimizer.target_num_zero_groups == math.floor(kwargs["target_sparsity"] * NUM_GROUPS + 0.5)
        )
    else:
        assert optimizer.removed_fraction() >= kwargs["target_sparsity"]


def test_families_not_larger_than_the_minimum_are_never_pruned():
    model, groups, optimizer = make(**EAGER, target_sparsity=0.6, min_heads_per_layer=5)
    assert [f.max_zero for f in optimizer.families] == [0, 12, 0, 12]
    history = run(model, groups, optimizer)
    assert history[-1][0] == history[-1][2] == 0 and sum(history[-1]) == 17


# ----------------------------------------------------------------------------- uniform widths

# Tiny model: per layer one family of 2 heads and one of 12 neurons. Per class (kind, size), steps "one more zero
# group in every family of the class" are taken by increasing width fraction k / size (ties: heads, which come first)
# until the total reaches round(target * 28): the smallest total at or above it, as every step adds 2 groups here.
UNIFORM_CASES = [
    # target, min_heads_per_layer, zero heads per layer, zero neurons per layer
    (0.1, 0, 0, 2),  # needs 3: 4
    (0.3, 0, 0, 4),  # 8
    (0.5, 0, 1, 6),  # 14: heads at 1/2 before neurons at 6/12
    (0.7, 0, 1, 9),  # 20
    (0.9, 0, 2, 11),  # needs 25: 26, heads at 2/2 before neurons at 12/12
    (0.9, 1, 1, 12),  # needs 25: 26, heads capped at 1
]


@pytest.mark.parametrize("target, minimum, heads, neurons", UNIFORM_CASES)
def test_uniform_widths_plan(target, minimum, heads, neurons):
    _, _, optimizer = make(target_sparsity=target, uniform_widths=True, min_heads_per_layer=minimum)
    assert [f.max_zero for f in optimizer.families] == [heads, neurons] * 2
    needed = math.floor(target * NUM_GROUPS + 0.5)
    assert optimizer.target_num_zero_groups == 2 * (heads + neurons)
    assert 0 <= optimizer.target_num_zero_groups - needed < 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {**EAGER, "target_sparsity": 0.5},
        {**EAGER, "target_sparsity": 0.7, "min_heads_per_layer": 1, "lambda_schedule": "progressive"},
        {"variant": "adamw", "lr": 0.01, "target_sparsity": 0.5, "lambda_schedule": "progressive"},
        {**EAGER, "target_sparsity": 0.3, "sparsity_budget": "params"},
        {
            "target_sparsity": 0.4,
            "sparsity_budget": "flops",
            "group_costs": FLOP_COSTS,
            "lambda_schedule": "progressive",
        },
    ],
    ids=["groups", "min-kept-progressive", "adamw-progressive", "params", "flops-progressive"],
)
def test_uniform_widths_fill_every_family_exactly(kwargs):
    model, groups, optimizer = make(uniform_widths=True, **kwargs)
    quotas = [family.max_zero for family in optimizer.families]
    assert quotas[0] == quotas[2] and quotas[1] == quotas[3]
    history = run(model, groups, optimizer)
    assert history[optimizer.pruning_end_steps - 1] == history[-1] == quotas
    assert optimizer.num_zero_groups() == optimizer.target_num_zero_groups == sum(quotas)
    if kwargs.get("sparsity_budget", "groups") != "groups":
        # At or above the target; planned with the cheapest groups of each family, so never below it.
        assert optimizer.removed_fraction() >= kwargs["target_sparsity"]
    # Natural projections happened before the deadline (the caps were exercised), within the quotas.
    assert sum(history[optimizer.pruning_end_steps - 2]) > 0


def test_uniform_deadline_takes_the_least_salient_groups_of_each_family():
    model = TinyModel()
    groups = tiny_groups(model)
    budget = resolve_budget("groups", 0.5, 0.05, [g.num_params for g in groups], None, None)
    families = FamilyConstraints(groups, {"head": 1}, True, budget, tolerance=0.05)
    scores = torch.rand(NUM_GROUPS, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zero = torch.zeros(NUM_GROUPS, dtype=torch.bool)
    zero[[2, 3]] = True  # two neurons of layer 0 are already zero
    scores[zero] = math.inf
    redundant, priority = families.choose_redundant(scores, zero, budget)
    chosen = families.deadline_selection(scores, zero, redundant, budget)
    for family in families.families:
        ids = torch.tensor(family.group_ids)
        already = int(zero[ids].sum())
        expected = ids[torch.sort(scores[ids], descending=True, stable=True).indices][already : family.max_zero]
        assert sorted(torch.nonzero(chosen[ids]).flatten().add(ids[0]).tolist()) == sorted(expected.tolist())
        # The redundant set of a family: its quota plus round(0.05 * size) groups, the least salient first.
        top = ids[torch.sort(scores[ids], descending=True, stable=True).indices]
        share = 0 if family.max_zero == 0 else min(family.size, family.max_zero + round(0.05 * family.size))
        assert sorted(ids[redundant[ids]].tolist()) == sorted(top[:share].tolist())
    assert int((chosen | zero).sum()) == 14


def test_family_cap_keeps_candidates_in_priority_order_within_each_quota():
    model = TinyModel()
    groups = tiny_groups(model)
    budget = resolve_budget("groups", 0.5, 0.05, [g.num_params for g in groups], None, None)
    families = FamilyConstraints(groups, {}, True, budget, tolerance=0.05)  # quotas [1, 6, 1, 6]
    priority = torch.randperm(NUM_GROUPS, generator=torch.Generator().manual_seed(1))
    zero = torch.zeros(NUM_GROUPS, dtype=torch.bool)
    zero[[4, 5]] = True
    candidates = ~zero
    allowed = families.cap(candidates, zero, families.family_order(priority))
    rank = torch.empty_like(priority)
    rank[priority] = torch.arange(NUM_GROUPS)
    for family in families.families:
        ids = torch.tensor(family.group_ids)
        room = family.max_zero - int(zero[ids].sum())
        free = ids[candidates[ids]]
        expected = free[torch.sort(rank[free]).indices][:room]
        assert sorted(ids[allowed[ids]].tolist()) == sorted(expected.tolist())
    # `due` with progress 0.4 takes ceil(0.4 * quota) - zero groups per family, in priority order.
    due = families.due(candidates, zero, families.family_order(priority), progress=0.4)
    assert families.zero_counts(due | zero).tolist() == [1, 3, 1, 3]


# ----------------------------------------------------------------------------- resume and host sync


@pytest.mark.parametrize(
    "kwargs",
    [
        {"uniform_widths": True, "min_heads_per_layer": 1, "lambda_schedule": "progressive"},
        {
            "min_heads_per_layer": 1,
            "min_neurons_per_layer": 1,
            "sparsity_budget": "params",
            "lambda_schedule": "progressive",
            "num_partition_periods": 2,
        },
    ],
    ids=["uniform", "min-kept-params"],
)
def test_resume_with_constraints_and_schedule_is_bit_identical(tmp_path, kwargs):
    kwargs = {"variant": "adamw", "lr": 0.01, "target_sparsity": 0.6, **kwargs}
    reference, _, reference_optimizer = make(**kwargs)
    for step in range(30):
        train_step(reference, reference_optimizer, step)

    model, _, optimizer = make(**kwargs)
    for step in range(13):
        train_step(model, optimizer, step)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    state = torch.load(tmp_path / "optimizer.pt", weights_only=True)
    assert bool((state["dhspg"]["due_start"] >= 0).any()) and state["dhspg"]["importance_steps"] > 0

    resumed, _, resumed_optimizer = make(seed=123, **kwargs)
    resumed.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    resumed_optimizer.load_state_dict(state)
    for step in range(13, 30):
        train_step(resumed, resumed_optimizer, step)
    for (name, p), q in zip(resumed.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(resumed_optimizer.lambdas, reference_optimizer.lambdas)
    assert resumed_optimizer.zero_group_ids() == reference_optimizer.zero_group_ids()

    _, _, other = make(**{**kwargs, "min_heads_per_layer": 0, "min_neurons_per_layer": 0, "uniform_widths": False})
    with pytest.raises(ValueError, match="other family quotas"):
        other.load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"uniform_widths": True, "lambda_schedule": "progressive"},
        {
            "min_heads_per_layer": 1,
            "min_neurons_per_layer": 1,
            "sparsity_budget": "params",
            "lambda_schedule": "progressive",
        },
    ],
    ids=["uniform", "min-kept-params"],
)
def test_constrained_steps_do_not_synchronise(monkeypatch, kwargs):
    model, _, optimizer = make(**EAGER, target_sparsity=0.5, partition_steps=2, pruning_end_steps=12, **kwargs)
    train_without_host_sync(model, optimizer, 14, monkeypatch)
    assert optimizer.num_zero_groups() == optimizer.target_num_zero_groups


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"target_sparsity": 0.9, "min_heads_per_layer": 1, "min_neurons_per_layer": 1},
            r"Unreachable target under `min_heads_per_layer=1`, `min_neurons_per_layer=1`: the target needs 25 zero "
            r"groups, but keeping that "
            r"minimum in every family, at most 24 of the 28 groups can be zero\. Lower `target_sparsity` to at most "
            r"0\.8571 or relax those limits",
        ),
        (
            {"target_sparsity": 0.9, "min_neurons_per_layer": 2, "uniform_widths": True},
            r"Unreachable target under `min_neurons_per_layer=2`",
        ),
        (
            {"target_sparsity": 0.5, "sparsity_budget": "params", "min_heads_per_layer": 2,
             "min_neurons_per_layer": 10},
            r"the target needs removing 484 \(params\), but .* cost at least 68 \(counting each family's cheapest\)",
        ),
        ({"min_heads_per_layer": -1}, r"`min_heads_per_layer` must be an int >= 0, got -1"),
        ({"min_channels_per_layer": 1.5}, r"`min_channels_per_layer` must be an int >= 0, got 1.5"),
        ({"uniform_widths": "yes"}, r"`uniform_widths` must be a bool, got 'yes'"),
        ({"lambda_schedule": "fast"}, r"`lambda_schedule` must be one of \('progressive', 'constant'\), got 'fast'"),
        ({"saliency": "magnitude"}, r"`saliency` must be one of \('auto', 'fisher', .*\), got 'magnitude'"),
        ({"max_family_sparsity": 0.0}, r"`max_family_sparsity` must be in \(0, 1\], got 0.0"),
        ({"never_empty": [(("x", 0),)]}, r"`never_empty` names 1 family key\(s\) that no group has"),
    ],
)  # fmt: skip
def test_constraint_argument_validation(kwargs, message):
    model = TinyModel()
    with pytest.raises(ValueError, match=message):
        DHSPG(model.parameters(), tiny_groups(model), model.named_parameters(), pruning_end_steps=10, **kwargs)
