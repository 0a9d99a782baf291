"""Tests for `oto_hf.optim.DHSPG`: base-optimizer equivalence, exact targets, budgets, resume and no host sync."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from oto_hf.graph.groups import GroupSet
from oto_hf.optim import DHSPG
from tests.utils.dhspg_toys import (
    NUM_GROUPS,
    ChainMLP,
    TinyModel,
    forbid_host_sync,
    group_state_is_zero,
    make,
    tiny_groups,
    train_step,
    train_without_host_sync,
    trainer_param_groups,
)

FRACTIONS = [0.1, 0.3, 0.5, 0.7, 0.9]

# ----------------------------------------------------------------------------- base optimizer equivalence

BASE_CASES = [
    ("adamw", torch.optim.AdamW, {"betas": (0.9, 0.99), "eps": 1e-8}),
    ("adam", torch.optim.Adam, {"betas": (0.8, 0.999), "eps": 1e-6}),
    ("sgd", torch.optim.SGD, {"momentum": 0.9}),
    ("sgd", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
]


@pytest.mark.parametrize("target, partition_step", [(0.0, 0), (0.5, 50)], ids=["target0", "before-partition"])
@pytest.mark.parametrize("variant, torch_cls, extra", BASE_CASES, ids=["adamw", "adam", "sgd", "sgd-nesterov"])
def test_matches_torch_optimizer_without_pruning(variant, torch_cls, extra, target, partition_step):
    lr = 1e-2 if variant != "sgd" else 5e-2
    model, _, optimizer = make(
        variant=variant, lr=lr, target_sparsity=target, partition_steps=partition_step, pruning_end_steps=60,
        weight_decay=0.1, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = TinyModel()
    reference.load_state_dict(model.state_dict())
    reference_optimizer = torch_cls(trainer_param_groups(reference, 0.1), lr=lr, foreach=False, **extra)
    for step in range(50):
        train_step(model, optimizer, step)
        train_step(reference, reference_optimizer, step)
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            assert torch.allclose(p, q, rtol=0, atol=1e-6), f"step {step}: {name} differs"
    assert optimizer.num_zero_groups() == 0


# ----------------------------------------------------------------------------- exact target


@pytest.mark.parametrize("variant", ["sgd", "adamw"])
@pytest.mark.parametrize("target", FRACTIONS)
def test_exact_target_by_pruning_end_and_after(target, variant):
    lr = 0.1 if variant == "sgd" else 0.01
    lmbda = 1.0 if variant == "sgd" else 5.0
    model, groups, optimizer = make(variant=variant, lr=lr, lambda_=lmbda, target_sparsity=target)
    expected = math.floor(target * NUM_GROUPS + 0.5)
    assert optimizer.target_num_zero_groups == expected
    zero_at_end = None
    for step in range(40):
        train_step(model, optimizer, step)
        assert optimizer.num_zero_groups() <= expected
        if step + 1 == optimizer.pruning_end_steps:
            zero_at_end = optimizer.zero_group_ids()
    assert len(zero_at_end) == expected
    assert optimizer.zero_group_ids() == zero_at_end == groups.zero_group_ids(model)
    assert optimizer.group_sparsity() == pytest.approx(expected / NUM_GROUPS)
    assert group_state_is_zero(model, groups, optimizer, zero_at_end)


def test_half_space_projects_before_deadline_and_penalty_stops_at_target():
    # OTOv2's rule alone (constant schedule): natural projections before the deadline, not all of the target.
    model, groups, optimizer = make(
        lr=0.1, lambda_=1.0, final_epsilon=0.9, target_sparsity=0.5, lambda_schedule="constant"
    )
    counts = []
    for step in range(optimizer.pruning_end_steps - 1):
        train_step(model, optimizer, step)
        counts.append(optimizer.num_zero_groups())
    assert 0 < counts[-1] < 14, "expected some natural projections before the deadline"
    assert set(optimizer.zero_group_ids()) <= set(optimizer.redundant_group_ids())
    assert counts == sorted(counts)

    # A target reached early switches the penalty off: every lambda is zero afterwards.
    model, _, optimizer = make(
        lr=0.1, lambda_=1.0, final_epsilon=0.9, target_sparsity=0.1, pruning_end_steps=40, lambda_schedule="constant"
    )
    for step in range(30):
        train_step(model, optimizer, step)
    assert optimizer.num_zero_groups() == optimizer.target_num_zero_groups == 3
    assert not optimizer.lambdas.any()


def test_exact_target_with_learning_rate_decaying_to_zero():
    model, groups, optimizer = make(variant="adamw", lr=0.01, target_sparsity=0.3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1e-12 if step >= 6 else 1.0)
    for step in range(35):
        train_step(model, optimizer, step)
        scheduler.step()
    assert optimizer.num_zero_groups() == 8
    assert optimizer.zero_group_ids() == groups.zero_group_ids(model)


@pytest.mark.parametrize("variant", ["sgd", "adamw"])
def test_zero_groups_keep_zero_weights_and_optimizer_state(variant):
    model, groups, optimizer = make(variant=variant, lr=0.05 if variant == "sgd" else 0.01, target_sparsity=0.5)
    for step in range(25):
        train_step(model, optimizer, step)
    zero = optimizer.zero_group_ids()
    assert len(zero) == 14
    assert group_state_is_zero(model, groups, optimizer, zero)
    for step in range(25, 35):
        train_step(model, optimizer, step)
        assert group_state_is_zero(model, groups, optimizer, zero)
    # The other groups still train.
    nonzero = sorted(set(range(NUM_GROUPS)) - set(zero))
    assert all(not group_state_is_zero(model, groups, optimizer, [g]) for g in nonzero)


def test_groups_overlapping_on_rows_and_columns():
    model, groups, optimizer = make(ChainMLP, variant="adamw", lr=0.01, target_sparsity=0.5)
    for step in range(30):
        train_step(model, optimizer, step)
    assert optimizer.num_zero_groups() == 10
    assert optimizer.zero_group_ids() == groups.zero_group_ids(model)
    assert group_state_is_zero(model, groups, optimizer, optimizer.zero_group_ids())


# ----------------------------------------------------------------------------- budgets


@pytest.mark.parametrize(
    "budget, costs", [("params", None), ("flops", [30.0] * 2 + [2.0] * 12 + [30.0] * 2 + [2.0] * 12)]
)
@pytest.mark.parametrize("target", [0.3, 0.55])
def test_cost_budget_is_hit_with_the_documented_rule(budget, costs, target):
    model, groups, optimizer = make(
        target_sparsity=target, sparsity_budget=budget, group_costs=costs, lambda_=1.0, lr=0.1
    )
    cost = torch.tensor(costs if costs else [g.num_params for g in groups], dtype=torch.float64)
    goal = target * float(cost.sum())
    assert optimizer.target_num_zero_groups is None
    for step in range(40):
        train_step(model, optimizer, step)
        removed = float(cost[optimizer.zero_group_ids()].sum())
        if step + 1 < optimizer.pruning_end_steps:
            assert removed <= goal
        elif step + 1 == optimizer.pruning_end_steps:
            final = optimizer.zero_group_ids()
    assert optimizer.zero_group_ids() == final == groups.zero_group_ids(model)
    removed = float(cost[final].sum())
    assert optimizer.removed_fraction() == pytest.approx(removed / float(cost.sum()))
    assert optimizer.target_num_zero_groups == len(final)
    # At or above the target, by less than the cheapest group still left (the group that closed the gap).
    assert goal <= removed < goal + float(cost[sorted(set(range(NUM_GROUPS)) - set(final))].min())


def test_budget_total_and_unreachable_budget():
    model = TinyModel()
    groups = tiny_groups(model)
    prunable = groups.num_params
    with pytest.raises(ValueError, match="Unreachable budget"):
        DHSPG(model.parameters(), groups, model.named_parameters(), target_sparsity=0.6, sparsity_budget="params",
              budget_total=2 * prunable, pruning_end_steps=10)  # fmt: skip
    with pytest.raises(ValueError, match="Unreachable budget"):
        DHSPG(model.parameters(), groups, model.named_parameters(), target_sparsity=0.1, sparsity_budget="flops",
              group_costs=[0.0] * NUM_GROUPS, pruning_end_steps=10)  # fmt: skip
    model, groups, optimizer = make(target_sparsity=0.4, sparsity_budget="params", budget_total=2 * prunable)
    for step in range(25):
        train_step(model, optimizer, step)
    # At or above the target, above it by less than the group that closed the gap (here at most a head).
    largest = max(g.num_params for g in groups)
    assert 0.4 <= optimizer.removed_fraction() < 0.4 + largest / (2 * prunable)


# ----------------------------------------------------------------------------- re-scoring


def test_rescoring_periods_keep_zero_groups_zero_and_redundant():
    model, groups, optimizer = make(
        lr=0.1, lambda_=1.0, final_epsilon=0.9, target_sparsity=0.5, partition_steps=3, pruning_end_steps=33,
        num_partition_periods=3,
    )  # fmt: skip
    assert optimizer.partition_points == (3, 13, 23)
    redundant_sets, zero_before = [], []
    for step in range(40):
        if step in optimizer.partition_points:
            zero_before.append(set(optimizer.zero_group_ids()))
        train_step(model, optimizer, step)
        if step in optimizer.partition_points:
            redundant = set(optimizer.redundant_group_ids())
            assert zero_before[-1] <= set(optimizer.zero_group_ids()) <= redundant
            assert len(redundant) == max(math.ceil(0.55 * NUM_GROUPS), len(zero_before[-1]))
            redundant_sets.append(redundant)
    assert len({frozenset(s) for s in redundant_sets}) > 1, "re-scoring never changed the redundant set"
    assert zero_before[-1], "no group was zero before the last re-scoring"
    assert optimizer.num_zero_groups() == 14


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("variant", ["sgd", "adamw"])
@pytest.mark.parametrize("stop", [3, 14], ids=["warmup", "pruning"])
def test_resume_is_bit_identical(tmp_path, variant, stop):
    kwargs = dict(variant=variant, lr=0.1 if variant == "sgd" else 0.01, lambda_=1.0 if variant == "sgd" else 5.0,
                  target_sparsity=0.5, num_partition_periods=2, final_epsilon=0.5)  # fmt: skip
    reference, _, reference_optimizer = make(**kwargs)
    for step in range(32):
        train_step(reference, reference_optimizer, step)

    model, _, optimizer = make(**kwargs)
    for step in range(stop):
        train_step(model, optimizer, step)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    del model, optimizer

    resumed, _, resumed_optimizer = make(seed=123, **kwargs)
    resumed.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    resumed_optimizer.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    assert resumed_optimizer.num_steps == stop
    for step in range(stop, 32):
        train_step(resumed, resumed_optimizer, step)
    for (name, p), q in zip(resumed.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), name
    assert resumed_optimizer.zero_group_ids() == reference_optimizer.zero_group_ids()
    assert resumed_optimizer.state_dict()["dhspg"]["num_steps"] == 32


# ----------------------------------------------------------------------------- no host sync


@pytest.mark.parametrize("variant", ["sgd", "adam", "adamw"])
def test_normal_steps_do_not_synchronise(monkeypatch, variant):
    model, _, optimizer = make(variant=variant, partition_steps=2, pruning_end_steps=6)
    with forbid_host_sync(monkeypatch):
        with pytest.raises(AssertionError, match="host synchronisation"):
            torch.ones(1).item()
    train_without_host_sync(model, optimizer, 9, monkeypatch)
    assert optimizer.phase == "recovery"


# ----------------------------------------------------------------------------- API and validation


def test_progress_api_and_from_model():
    torch.manual_seed(0)
    model = TinyModel()
    groups = tiny_groups(model)
    optimizer = DHSPG.from_model(model, groups, lr=0.05, variant="sgd", weight_decay=0.01, target_sparsity=0.3,
                                 partition_steps=2, pruning_end_steps=5)  # fmt: skip
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert optimizer.num_groups == NUM_GROUPS and optimizer.target_num_zero_groups == 8
    phases = []
    for step in range(7):
        phases.append(optimizer.phase)
        train_step(model, optimizer, step)
    assert phases == ["warmup"] * 2 + ["pruning"] * 3 + ["recovery"] * 2
    assert optimizer.num_zero_groups() == 8 and optimizer.removed_fraction() == optimizer.group_sparsity() == 8 / 28
    assert optimizer.lambdas.shape == (NUM_GROUPS,)
    assert optimizer.state_nbytes() > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_sparsity": 1.0}, r"`target_sparsity` must be in \[0, 1\), got 1.0"),
        ({"target_sparsity": -0.1}, r"`target_sparsity` must be in \[0, 1\)"),
        (
            {"partition_steps": 10, "pruning_end_steps": 10},
            r"`pruning_end_steps` must be an int greater than `partition_steps` \(10\)",
        ),
        ({"partition_steps": -1}, r"`partition_steps` must be an int >= 0"),
        ({"variant": "lion"}, r"`variant` must be one of \('sgd', 'adam', 'adamw'\), got 'lion'"),
        ({"lr": -1.0}, r"`lr` must be >= 0 \(parameter group 0\), got -1.0"),
        ({"betas": (1.0, 0.9)}, r"`betas` must be two numbers in \[0, 1\)"),
        ({"weight_decay": -0.1}, r"`weight_decay` must be >= 0"),
        ({"momentum": 0.0, "nesterov": True}, r"`nesterov=True` needs `momentum > 0`"),
        ({"num_partition_periods": 0}, r"`num_partition_periods` must be an int >= 1, got 0"),
        (
            {"num_partition_periods": 20, "pruning_end_steps": 10},
            r"`num_partition_periods` must be an int in \[1, pruning_end_steps - partition_steps\] = "
            r"\[1, 10\], got 20",
        ),
        ({"lambda_": 0.0}, r"`lambda_` must be > 0"),
        ({"lambda_amplify": 0.5}, r"`lambda_amplify` must be >= 1, got 0.5"),
        ({"lambda_cap": 0.5}, r"`lambda_cap` must be >= 1"),
        ({"epsilon": 1.0}, r"`epsilon` must be in \[0, 1\)"),
        ({"final_epsilon": 1.5}, r"`final_epsilon` must be in \[0, 1\), got 1.5"),
        ({"tolerance": -0.5}, r"`tolerance` must be in \[0, 1\)"),
        ({"importance_window": -1}, r"`importance_window` must be an int >= 0, got -1"),
        (
            {"saliency_cosine_weight": 0.0, "saliency_magnitude_weight": 0.0},
            r"`saliency_cosine_weight` and `saliency_magnitude_weight` must be non-negative",
        ),
        (
            {"sparsity_budget": "tokens"},
            r"`sparsity_budget` must be one of \('groups', 'params', 'flops'\), got 'tokens'",
        ),
        ({"group_costs": [1.0] * NUM_GROUPS}, r"`group_costs` is only used with `sparsity_budget='flops'`"),
        (
            {"sparsity_budget": "flops", "group_costs": [1.0] * 3},
            r"`group_costs` must have one entry per group \(28\), got 3",
        ),
    ],
)
def test_argument_validation(kwargs, message):
    model = TinyModel()
    kwargs = {"pruning_end_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        DHSPG(model.parameters(), tiny_groups(model), model.named_parameters(), **kwargs)


def test_group_interface_errors():
    model = TinyModel()
    groups = tiny_groups(model)
    named = dict(model.named_parameters())
    with pytest.raises(ValueError, match=r"slices parameter 'blocks.0.q.weight', which is not in `named_parameters`"):
        DHSPG(
            model.parameters(),
            groups,
            {k: v for k, v in named.items() if k != "blocks.0.q.weight"},
            pruning_end_steps=5,
        )
    frozen = [p for n, p in named.items() if n != "blocks.1.up.bias"]
    with pytest.raises(ValueError, match=r"'blocks.1.up.bias', which is not in the optimizer's `params`"):
        DHSPG(frozen, groups, named, pruning_end_steps=5)
    clash = GroupSet([*groups, dataclasses.replace(groups[3], id=NUM_GROUPS)])
    with pytest.raises(ValueError, match=r"Groups 3 and 28 both slice 'blocks.0.up.weight' along dim 0 at index 1"):
        DHSPG(model.parameters(), clash, named, pruning_end_steps=5)
    optimizer = DHSPG(model.parameters(), groups, named, pruning_end_steps=5)
    with pytest.raises(ValueError, match="not written by `DHSPG.state_dict\\(\\)`"):
        optimizer.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize(
    "variant, extra",
    [("adamw", {}), ("adam", {}), ("sgd", {}), ("sgd", {"nesterov": True}), ("sgd", {"momentum": 0.0})],
    ids=["adamw", "adam", "sgd", "sgd-nesterov", "sgd-plain"],
)
def test_directions_written_into_the_gradients_equal_fresh_ones(variant, extra, foreach):
    """A pruning step writes each direction into its gradient's storage: same values as fresh tensors, same state."""
    from oto_hf.optim import base_steps

    torch.manual_seed(0)
    params = [torch.randn(5, 3), torch.randn(7)]
    group = {"lr": 0.1, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1, "momentum": 0.9, "dampening": 0.0,
             "nesterov": False, **extra}  # fmt: skip
    states = [[{}, {}], [{}, {}]]
    for step in range(3):
        grads = [torch.randn_like(p) for p in params]
        results = []
        for consume, state in zip((False, True), states):
            for p, s in zip(params, state):
                base_steps.init_state(variant, p, s)
            copies = [g.clone() for g in grads]
            d, decay = base_steps.directions(variant, params, copies, state, group, foreach, consume_grads=consume)
            results.append(([t.clone() for t in d], decay))
            if consume and not (variant == "sgd" and group["momentum"] and not group["nesterov"]):
                assert all(t.data_ptr() == c.data_ptr() for t, c in zip(d, copies))  # no new tensor
        (fresh, decay_fresh), (reused, decay_reused) = results
        assert decay_fresh == decay_reused
        for a, b in zip(fresh, reused):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        for a, b in zip(*states):
            for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
                if a.get(key) is not None:
                    torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)


def test_parameters_swapped_before_the_first_step_are_followed():
    """accelerate's FSDP2 prepare swaps each optimizer parameter for a new tensor after the optimizer is built."""
    reference, _, reference_optimizer = make(variant="adamw", lr=1e-2, target_sparsity=0.5)
    model, _, optimizer = make(variant="adamw", lr=1e-2, target_sparsity=0.5)
    new_of = {}
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            new_of[id(param)] = nn.Parameter(param.detach().clone())
            setattr(module, name, new_of[id(param)])
    for param_group in optimizer.param_groups:
        param_group["params"] = [new_of[id(p)] for p in param_group["params"]]
    for step in range(optimizer.pruning_end_steps + 2):
        train_step(reference, reference_optimizer, step)
        train_step(model, optimizer, step)
    assert optimizer.zero_group_ids() == reference_optimizer.zero_group_ids() != []
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), name
    for param_group in optimizer.param_groups:  # once it has stepped, the parameters are its own
        param_group["params"] = [nn.Parameter(p.detach().clone()) for p in param_group["params"]]
    with pytest.raises(RuntimeError, match="replaced after it took steps"):
        optimizer.step()
