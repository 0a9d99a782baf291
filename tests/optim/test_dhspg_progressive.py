"""DHSPG's progressive schedule (the default): groups reach zero through the optimizer's steps, none forced, on plan;
the Fisher importance per cost that ranks them; the constant (OTOv2) schedule for comparison."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch

from oto_hf.optim.selection import importance_scores
from tests.utils.dhspg_toys import (
    FLOP_COSTS,
    NUM_GROUPS,
    batch,
    group_state_is_zero,
    make,
    train_step,
    train_without_host_sync,
)
from tests.utils.paths import REPO_ROOT


def group_norms(model, groups) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.tensor(
        [
            math.sqrt(
                sum(float(params[name].detach().index_select(dim, idx).square().sum()) for name, dim, idx in g.slices)
            )
            for g in groups
        ]
    )


def run_window(model, groups, optimizer, steps: int | None = None):
    """Train to `steps` (default: 5 past the deadline); returns the zero count and the group norms before each step."""
    counts, norms = [], []
    for step in range(steps or optimizer.pruning_end_steps + 5):
        norms.append(group_norms(model, groups))
        train_step(model, optimizer, step)
        counts.append(optimizer.num_zero_groups())
    return counts, norms


CASES = {
    "sgd": {"variant": "sgd", "lr": 0.05},
    "adamw": {"variant": "adamw", "lr": 1e-3},
    "adamw-tiny-lr": {"variant": "adamw", "lr": 1e-6},  # time-to-zero must not depend on the learning rate
    "params": {"variant": "adamw", "lr": 1e-3, "sparsity_budget": "params"},
    "flops-min-kept": {"variant": "adamw", "lr": 1e-3, "sparsity_budget": "flops", "group_costs": FLOP_COSTS,
                       "min_heads_per_layer": 1},
    "uniform": {"variant": "adamw", "lr": 1e-3, "uniform_widths": True},
    "max-family-sparsity": {"variant": "adamw", "lr": 1e-3, "max_family_sparsity": 0.75},
}  # fmt: skip


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_every_zero_group_is_reached_by_the_optimizer_none_forced(kwargs):
    model, groups, optimizer = make(target_sparsity=0.5, **kwargs)
    assert optimizer.lambda_schedule == "progressive" and optimizer.saliency == "fisher"
    counts, _ = run_window(model, groups, optimizer)
    end = optimizer.pruning_end_steps
    assert optimizer.num_forced_zero_groups == 0
    # The last quota reaches zero at the end of its ramp, the deadline step, by the half-space test; nothing after.
    assert counts[end - 1] == counts[-1] == optimizer.num_zero_groups() > counts[end - 2] > 0
    if kwargs.get("budget", "groups") == "groups":
        assert optimizer.num_zero_groups() == optimizer.target_num_zero_groups
    else:
        assert optimizer.removed_fraction() >= 0.5
    assert group_state_is_zero(model, groups, optimizer, optimizer.zero_group_ids())
    for family in optimizer.families:
        assert sum(g in set(optimizer.zero_group_ids()) for g in family.group_ids) <= family.max_zero


def test_one_quota_per_period_and_each_group_nearly_zero_when_projected():
    model, groups, optimizer = make(
        variant="adamw", lr=1e-3, target_sparsity=0.5, partition_steps=5, pruning_end_steps=45, num_partition_periods=4
    )
    assert optimizer.partition_points == (5, 15, 25, 35)
    counts, norms = run_window(model, groups, optimizer)
    target = optimizer.target_num_zero_groups
    # Each period's ramp ends at the step before the next period: by then k/4 of the target is zero, not before.
    for period, end in enumerate((14, 24, 34, 44), start=1):
        assert counts[end] == math.floor(target * period / 4), counts
        assert counts[end - 1] == math.floor(target * (period - 1) / 4), counts
    # When projected, a group holds a few percent of its norm at the start of its ramp (not ~90%, as when forced).
    zero_at = {}
    for step, count in enumerate(counts):
        after = norms[step + 1] if step + 1 < len(norms) else group_norms(model, groups)
        for g in torch.nonzero((after == 0) & (norms[step] > 0)).flatten().tolist():
            zero_at[g] = step
    ratios = []
    for g, step in zero_at.items():
        start = max(s for s in optimizer.partition_points if s <= step)
        ratios.append(float(norms[step][g] / norms[start][g]))
    # A 10-step ramp: one tenth is left before the step that projects it.
    assert len(ratios) == target and max(ratios) < 0.11, ratios


def test_constant_schedule_leaves_the_target_to_the_deadline(caplog):
    """OTOv2's rule alone, with Adam learning rates: no group leaves the half-space in time, the deadline forces them
    all, and says so."""
    model, groups, optimizer = make(variant="adamw", lr=1e-3, target_sparsity=0.5, lambda_schedule="constant")
    with caplog.at_level(logging.WARNING, logger="oto_hf.optim.dhspg"):
        counts, _ = run_window(model, groups, optimizer)
    assert counts[optimizer.pruning_end_steps - 2] == 0
    assert optimizer.num_forced_zero_groups == optimizer.num_zero_groups() == optimizer.target_num_zero_groups
    assert "forced by the deadline (100.0% of the target)" in caplog.text


def test_otov2_preset_ranks_by_its_saliency_and_accumulates_no_importance():
    """`lambda_schedule="constant", saliency="otov2"`: OTOv2's rules for parity studies; the target is still exact."""
    model, groups, optimizer = make(
        variant="adamw", lr=1e-3, target_sparsity=0.5, lambda_schedule="constant", saliency="otov2"
    )
    counts, _ = run_window(model, groups, optimizer)
    assert counts[-1] == optimizer.target_num_zero_groups
    assert not optimizer.importance.any()  # the Fisher statistics are neither computed nor kept


def test_progressive_pruning_steps_do_not_synchronise(monkeypatch):
    model, _, optimizer = make(variant="adamw", lr=1e-3, target_sparsity=0.5, partition_steps=2, pruning_end_steps=12,
                               min_heads_per_layer=1, min_neurons_per_layer=1)  # fmt: skip
    train_without_host_sync(model, optimizer, 14, monkeypatch)
    assert optimizer.num_zero_groups() == optimizer.target_num_zero_groups and optimizer.num_forced_zero_groups == 0


def test_importance_per_cost_ranks_kinds_on_one_scale():
    importance = torch.tensor([100.0, 2.0, 0.5, 0.0, 7.0])
    costs = torch.tensor([100.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    zero = torch.tensor([False, False, False, False, True])
    scores = importance_scores(importance, costs, zero)
    # A head worth 1 per unit of cost goes before a neuron worth 2; the zero group first; a free group never.
    order = torch.sort(scores, descending=True).indices.tolist()
    assert order == [4, 2, 0, 1, 3]
    assert scores[3] == -math.inf and scores[4] == math.inf


def test_importance_is_the_squared_mask_gradient_accumulated_before_the_first_partition():
    model, groups, optimizer = make(variant="adamw", lr=1e-3, partition_steps=6, pruning_end_steps=26)
    # Periods of 4 steps: importance is accumulated over the last 4 warm-up steps, before the first partition.
    expected = torch.zeros(NUM_GROUPS)
    params = dict(model.named_parameters())
    for step in range(6):
        x, y = batch(step)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if step >= 2:
            for g in groups:
                mask_grad = sum(
                    float((params[name].detach() * params[name].grad).index_select(dim, idx).sum())
                    for name, dim, idx in g.slices
                )
                expected[g.id] += mask_grad**2
        optimizer.step()
    torch.testing.assert_close(optimizer.importance, expected / 4, rtol=1e-4, atol=1e-10)


def test_ranks_with_different_statistics_agree_on_every_decision(tmp_path):
    """Local decisions differ when each rank's statistics differ; taken from rank 0, the zero masks agree."""
    root = REPO_ROOT
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29523"]
    out = tmp_path / "agreement.json"
    run = subprocess.run([*launcher, "-m", "tests.utils.rank_agreement", str(out)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(out.read_text()) == {"synced": True, "local": False}
