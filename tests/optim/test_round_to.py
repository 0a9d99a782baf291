"""`round_to`: DHSPG's quotas on an engine-friendly grid (`oto_hf.optim.rounding`), met exactly at the deadline."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import HfArgumentParser, LlamaConfig, LlamaForCausalLM

from oto_hf import OTOTrainingArguments, construct_subnet, discover_groups
from oto_hf.optim import DHSPG
from oto_hf.optim.checks import check_dhspg_settings
from oto_hf.optim.rounding import GridPlanner, KindRule, zero_grid_ceil
from oto_hf.record import PruningRecord
from tests.utils.asserts import masked_copy, max_output_diff
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
from tests.utils.tiny_models import TEXT


def run_checked(model, optimizer, steps: int = 32) -> list[list[int]]:
    """Train; after every step no family may hold more zero groups than its current quota. Returns the zero counts."""
    history = []
    for step in range(steps):
        train_step(model, optimizer, step)
        counts = optimizer.family_zero_counts()
        quotas = [family.max_zero for family in optimizer.families]
        assert all(c <= q for c, q in zip(counts, quotas)), f"step {step}: {counts} above the quotas {quotas}"
        history.append(counts)
    return history


def on_grid(kept: int, size: int, multiple: int) -> bool:
    return kept == size or kept % multiple == 0


# ----------------------------------------------------------------------------- the grid


@pytest.mark.parametrize(
    "size, multiple, expected",
    [(12, 4, [0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12]), (37, 8, [0, 5, 5, 5, 5, 5, 13]), (5, 1, [0, 1, 2, 3])],
)
def test_zero_grid_ceil_keeps_a_multiple_or_the_full_width(size, multiple, expected):
    counts = torch.arange(len(expected))
    result = zero_grid_ceil(counts, torch.full_like(counts, size), torch.full_like(counts, multiple))
    assert result.tolist() == expected
    assert all(on_grid(size - z, size, multiple) for z in result.tolist())


def planner(sizes, kinds, rules, min_kept=None, uniform_widths=False):
    members, start = [], 0
    for size in sizes:
        members.append(list(range(start, start + size)))
        start += size
    family_of = torch.cat([torch.full((size,), f) for f, size in enumerate(sizes)])
    layers = [None] * len(sizes)  # no family moves with another unless uniform
    return GridPlanner(kinds, members, min_kept or [0] * len(sizes), rules, uniform_widths, layers), family_of


def test_the_plan_takes_whole_grid_steps_by_mean_score_and_reaches_the_target():
    grid, family_of = planner([12, 12], ["neuron", "neuron"], {"neuron": KindRule(4)})
    # Family 0's groups score 11..0, family 1's 23..12 (higher: more redundant); all cost 1.
    scores = torch.cat([torch.arange(11, -1, -1), torch.arange(23, 11, -1)]).double()
    costs = torch.ones(24, dtype=torch.float64)
    none = torch.zeros(24, dtype=torch.bool)
    assert grid.plan(scores, none, costs, family_of, 4.0).tolist() == [0, 4]
    assert grid.plan(scores, none, costs, family_of, 5.0).tolist() == [0, 8]  # 8 >= 5, by less than a step
    assert grid.plan(scores, none, costs, family_of, 13.0).tolist() == [4, 12]
    # Taken groups (zero or due) are rounded up to the grid first: 5 taken in family 0 count as 8.
    taken = none.clone()
    taken[[0, 2, 4, 6, 8]] = True
    assert grid.plan(scores, taken, costs, family_of, 4.0).tolist() == [8, 0]
    assert grid.plan(scores, taken, costs, family_of, 9.0).tolist() == [8, 4]


def test_a_uniform_class_moves_together_and_the_limits_bound_it():
    rules = {"head": KindRule(1, True), "neuron": KindRule(4)}
    grid, family_of = planner([2, 12, 2, 12], ["head", "neuron"] * 2, rules, min_kept=[1, 0, 0, 5])
    # Heads: the uniform class keeps at least 1 head in each family; neurons of family 3 keep 8 (5 rounded up).
    assert grid.most.tolist() == [1, 12, 1, 4]
    scores = torch.zeros(28, dtype=torch.float64)
    scores[[0, 1]] = 10.0  # the first layer's heads are very redundant, the second layer's are not
    costs = torch.ones(28, dtype=torch.float64)
    quotas = grid.plan(scores, torch.zeros(28, dtype=torch.bool), costs, family_of, 2.0)
    assert quotas.tolist() == [1, 0, 1, 0]  # one head in every layer: mean score 5 beats any block of neurons
    assert grid.is_on_grid(quotas) and not grid.is_on_grid(torch.tensor([1, 0, 0, 0]))
    assert not grid.is_on_grid(torch.tensor([0, 3, 0, 0])) and not grid.is_on_grid(torch.tensor([0, 0, 0, 8]))


# ----------------------------------------------------------------------------- DHSPG to its deadline

CASES = {
    "neuron-groups": dict(round_to={"neuron": 4}, target_sparsity=0.5),
    "neuron-5-min-kept": dict(round_to={"neuron": 5}, min_neurons_per_layer=1, target_sparsity=0.5),
    "uniform-heads-flops": dict(
        round_to={"neuron": 4, "head": "uniform"}, sparsity_budget="flops", group_costs=FLOP_COSTS, target_sparsity=0.6
    ),
    "uniform-heads-adamw": dict(round_to={"head": "uniform"}, variant="adamw", lr=0.01, target_sparsity=0.7),
    "params-constant": dict(
        round_to={"neuron": 3}, sparsity_budget="params", lambda_schedule="constant", target_sparsity=0.4
    ),
    "uniform-widths-and-multiple": dict(round_to={"neuron": 4}, uniform_widths=True, target_sparsity=0.3),
    "max-family-sparsity": dict(
        round_to={"neuron": 4, "head": "uniform"}, max_family_sparsity=0.7, target_sparsity=0.5
    ),
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_every_family_ends_on_its_grid_with_the_target_reached(kwargs):
    model, groups, optimizer = make(**kwargs)
    history = run_checked(model, optimizer)
    end = optimizer.pruning_end_steps
    quotas = [family.max_zero for family in optimizer.families]
    assert history[end - 1] == history[-1] == quotas, "the deadline fills every quota exactly, recovery keeps it"
    rules = kwargs["round_to"]
    for family, zero in zip(optimizer.families, quotas):
        rule = rules.get(family.kind, "free")
        multiple = rule if isinstance(rule, int) else 1
        assert on_grid(family.size - zero, family.size, multiple), (family.kind, family.size, zero)
        assert zero <= family.size - family.min_kept
    heads = [zero for family, zero in zip(optimizer.families, quotas) if family.kind == "head"]
    if rules.get("head") == "uniform" or kwargs.get("uniform_widths"):
        assert len(set(heads)) == 1
    if kwargs.get("uniform_widths"):
        assert quotas[1] == quotas[3]
    # The target is reached, and exceeded by less than one grid step (at most 4 neurons in each of two layers).
    target = kwargs["target_sparsity"]
    budget = kwargs.get("sparsity_budget", "groups")
    if budget == "groups":
        needed = math.floor(target * NUM_GROUPS + 0.5)  # `round(target * num_groups)`, half up
        assert optimizer.num_zero_groups() == optimizer.target_num_zero_groups == sum(quotas)
        assert 0 <= sum(quotas) - needed < 8
    else:
        assert optimizer.removed_fraction() >= target
    if budget == "flops":
        assert (optimizer.removed_fraction() - target) * sum(FLOP_COSTS) < 2 * 30
    assert optimizer.zero_group_ids() == groups.zero_group_ids(model)
    assert group_state_is_zero(model, groups, optimizer, optimizer.zero_group_ids())
    if kwargs.get("lambda_schedule", "progressive") == "progressive":
        # Trained into that shape by the planned ramps, not forced at the deadline.
        assert optimizer.num_forced_zero_groups == 0


def test_the_steps_between_events_stay_on_the_device(monkeypatch):
    model, _, optimizer = make(round_to={"neuron": 4, "head": "uniform"}, target_sparsity=0.5)
    train_without_host_sync(model, optimizer, 30, monkeypatch)
    assert optimizer.num_zero_groups() == optimizer.target_num_zero_groups > 0


def test_free_rules_leave_dhspg_as_without_round_to():
    reference_model, _, reference = make(target_sparsity=0.5)
    model, _, optimizer = make(target_sparsity=0.5, round_to={"neuron": "free", "head": 1})
    for step in range(30):
        train_step(reference_model, reference, step)
        train_step(model, optimizer, step)
    assert optimizer.zero_group_ids() == reference.zero_group_ids()
    for p, q in zip(model.parameters(), reference_model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("stop", [10, 14], ids=["after-a-partition", "mid-period"])
def test_resume_restores_the_planned_quotas(tmp_path, stop):
    kwargs = dict(round_to={"neuron": 4, "head": "uniform"}, target_sparsity=0.5, variant="adamw", lr=0.01)
    reference, _, reference_optimizer = make(**kwargs)
    for step in range(30):
        train_step(reference, reference_optimizer, step)
    model, _, optimizer = make(**kwargs)
    for step in range(stop):
        train_step(model, optimizer, step)
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    resumed, _, resumed_optimizer = make(seed=1, **kwargs)
    resumed.load_state_dict(model.state_dict())
    resumed_optimizer.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    assert [f.max_zero for f in resumed_optimizer.families] == [f.max_zero for f in optimizer.families]
    for step in range(stop, 30):
        train_step(resumed, resumed_optimizer, step)
    for p, q in zip(resumed.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    # A run with another grid refuses the checkpoint.
    _, _, other = make(**{**kwargs, "round_to": {"neuron": 5}})
    with pytest.raises(ValueError, match=r"not on the `round_to` grid"):
        other.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))


@pytest.mark.parametrize(
    "heads, kv_heads, round_to, target",
    [
        (4, 4, {"neuron": 8, "head": "uniform"}, 0.5),
        (8, 2, {"neuron": 8, "head": "uniform", "kv_head": "uniform"}, 0.6),
        (8, 2, {"neuron": 8, "head": 2}, 0.6),
        (8, 2, {"neuron": 8}, 0.6),
    ],
    ids=["mha-uniform-heads", "gqa-uniform-heads", "gqa-heads-by-2", "gqa-free-heads"],
)
def test_a_tiny_llama_is_built_on_the_grid_without_padding(heads, kv_heads, round_to, target):
    torch.manual_seed(0)
    config = LlamaConfig(**{**TEXT, "num_attention_heads": heads}, num_key_value_heads=kv_heads)  # FFN 37
    model = LlamaForCausalLM(config)
    groups = discover_groups(model)
    optimizer = DHSPG.from_model(
        model, groups, lr=1e-3, target_sparsity=target, partition_steps=2, pruning_end_steps=10, round_to=round_to,
        min_heads_per_layer=1,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):
        ids = torch.randint(0, TEXT["vocab_size"], (4, 16), generator=generator)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    zero = optimizer.zero_group_ids()
    assert optimizer.num_forced_zero_groups == 0
    pruned = construct_subnet(copy.deepcopy(model), groups, zero)
    widths = [layer.mlp.up_proj.out_features for layer in pruned.model.layers]
    assert all(w == 37 or w % 8 == 0 for w in widths) and widths != [37, 37], widths
    head_dim = TEXT["hidden_size"] // heads
    attention = [
        (layer.self_attn.q_proj.out_features // head_dim, layer.self_attn.k_proj.out_features // head_dim)
        for layer in pruned.model.layers
    ]
    assert attention != [(heads, kv_heads)] * 2, "no head was pruned"
    if round_to.get("head") == "uniform":
        assert len(set(attention)) == 1, attention
    if round_to.get("head") == 2:
        assert all(q // k in (2, 4) for q, k in attention), attention
    # The KV groups of a layer keep equally many query heads: nothing is padded.
    assert all(layer.padded == 0 for layer in PruningRecord.from_model_or_config(pruned).layers)
    ids = torch.randint(0, TEXT["vocab_size"], (2, 8), generator=generator)
    assert max_output_diff(pruned, masked_copy(model, groups, zero), {"input_ids": ids}) < 1e-5


def test_grouped_query_attention_families_and_the_kv_group_minimum():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TEXT, num_key_value_heads=2))
    groups = discover_groups(model)
    # With `round_to`: one family of query heads per KV group (2 each), whose minimum counts per KV group.
    optimizer = DHSPG.from_model(model, groups, pruning_end_steps=10, round_to={"neuron": 8}, min_heads_per_layer=1)
    assert [(f.kind, f.size, f.min_kept) for f in optimizer.families[:4]] == [
        ("head", 2, 1), ("head", 2, 1), ("kv_head", 2, 1), ("neuron", 37, 0)
    ]  # fmt: skip
    # `min_heads_per_layer` keeps a KV group in every layer, and 0 does not; without `round_to`, a layer's query
    # heads are one family.
    for minimum in (0, 1):
        optimizer = DHSPG.from_model(model, groups, pruning_end_steps=10, min_heads_per_layer=minimum)
        assert {f.min_kept for f in optimizer.families if f.kind == "kv_head"} == {minimum}
        assert optimizer.families[0].kind == "head" and optimizer.families[0].size == 4


def rank_masks(sync: bool) -> list[list[int]]:
    """Under `torch.distributed` (gloo): each rank trains on its own data; per step, its quotas and zero group ids."""
    rank = dist.get_rank()
    model, _, optimizer = make(round_to={"neuron": 4, "head": "uniform"}, target_sparsity=0.5, sync_ranks=sync)
    history = []
    for step in range(optimizer.pruning_end_steps + 2):
        x, y = batch(step + 1000 * rank)  # other data: other statistics, other scores
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()
        history.append([f.max_zero for f in optimizer.families] + optimizer.zero_group_ids())
    return history


def test_ranks_with_different_statistics_agree_on_the_plan(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    out = tmp_path / "agreement.json"
    run = subprocess.run([*launcher, "-m", "tests.optim.test_round_to", str(out)], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(out.read_text()) == {"synced": True, "local": False}


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "value, message",
    [
        (
            {"neurons": 64},
            r"`round_to` names an unknown group kind 'neurons'; the kinds are \['head', 'kv_head', 'neuron'",
        ),
        ({"neuron": 0}, r"`round_to\['neuron'\]` must be an int >= 1 .*, 'free' or 'uniform', got 0"),
        ({"neuron": True}, r"`round_to\['neuron'\]` must be an int >= 1 .*got True"),
        ({"neuron": 64.0}, r"`round_to\['neuron'\]` must be an int >= 1 .*got 64.0"),
        ({"head": "even"}, r"`round_to\['head'\]` must be an int >= 1 .*got 'even'"),
        ([("neuron", 64)], r"`round_to` must be a dict from group kind to an int multiple, 'free' or 'uniform'"),
    ],
)
def test_bad_settings_fail_when_the_arguments_are_built(value, message):
    with pytest.raises(ValueError, match=message):
        check_dhspg_settings({"round_to": value})
    with pytest.raises(ValueError, match=message):
        make(round_to=value)
    with pytest.raises(ValueError, match=message):
        OTOTrainingArguments("unused", round_to=value)


def test_impossible_grids_fail_at_construction():
    with pytest.raises(ValueError, match=r"`round_to\['neuron'\]=16` is larger than a family of 12 'neuron' groups"):
        make(round_to={"neuron": 16})
    # Kept neurons at least 1 rounded up to 5 (7 of 12 may go) and 2 heads per layer: 18 groups of the 20 needed.
    with pytest.raises(ValueError, match=r"Unreachable target under .*`round_to=\{'neuron': 5\}`.*at most 0.6428"):
        make(round_to={"neuron": 5}, min_neurons_per_layer=1, target_sparsity=0.7)


def test_the_trainer_arguments_take_round_to_from_the_command_line():
    parser = HfArgumentParser(OTOTrainingArguments)
    for text, expected in [
        ("neuron=128,head=uniform", {"neuron": 128, "head": "uniform"}),
        ('{"neuron": 64, "head": 2}', {"neuron": 64, "head": 2}),
    ]:
        (args,) = parser.parse_args_into_dataclasses(["--output_dir", "unused", "--round_to", text])
        assert args.round_to == expected
        assert args.dhspg_kwargs(100)["round_to"] == expected
    assert OTOTrainingArguments("unused").round_to is None
    for text in ("neuron", "{neuron: 64}"):
        with pytest.raises(ValueError, match=r"`round_to` (must be JSON or `kind=value` pairs|is not valid JSON)"):
            OTOTrainingArguments("unused", round_to=text)


if __name__ == "__main__":  # one rank of `test_ranks_with_different_statistics_agree_on_the_plan`
    dist.init_process_group("gloo")
    agree = {}
    for sync in (True, False):
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, rank_masks(sync))
        agree["synced" if sync else "local"] = all(other == gathered[0] for other in gathered[1:])
    if dist.get_rank() == 0:
        Path(sys.argv[1]).write_text(json.dumps(agree))
    dist.destroy_process_group()
