"""Every architecture of `tests/utils/tiny_models.CASES` through the whole pipeline: discover -> valid groups ->
construct_subnet == zero-masked model -> save_pruned -> Auto-class reload -> equal outputs -> a few DHSPG steps; the
same groups from a user's inputs, their FLOP prices, and OTOTrainer's start on the causal LMs; for grouped-query
attention, query heads and KV groups removed alone and together, down to greedy generation with the KV cache."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from oto_hf import (
    GroupSet,
    OTOTrainer,
    OTOTrainingArguments,
    construct_subnet,
    count_flops,
    discover_groups,
    group_flop_costs,
    save_pruned,
)
from oto_hf.graph.nesting import nested_families, plan_removal
from tests.utils.asserts import (
    assert_groups_valid,
    assert_same_greedy_tokens,
    assert_save_load_roundtrip,
    assert_trains,
    assert_zero_invariant,
    masked_copy,
    random_nonuniform_ids,
)
from tests.utils.tiny_models import CASE_IDS, CASES, ArchCase, user_inputs

CAUSAL_LMS = [case for case in CASES if case.auto_class == "AutoModelForCausalLM"]


def _kv_heads(case: ArchCase) -> int | None:
    """KV heads per layer of a grouped-query attention case (fewer than its query heads), else None."""
    config = case.config()
    kv = getattr(config, "num_key_value_heads", None)
    return kv if kv is not None and kv < config.num_attention_heads else None


# (case, scenario): query heads removed alone, a KV group removed, both (not for MQA, whose one KV head stays).
NESTED = [
    (case, scenario)
    for case in CASES
    if _kv_heads(case)
    for scenario in ("query_heads", "kv_group", "both")
    if scenario == "query_heads" or _kv_heads(case) > 1
]


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


def test_user_inputs_give_the_same_groups(arch):
    """A tokenizer's padded batch or an image processor's pixels, passed as they are: a causal LM, which would return
    its key-value cache, traces too."""
    groups = discover_groups(arch.model, user_inputs(arch.model), probe=False)
    assert [repr(g) for g in groups] == [repr(g) for g in arch.groups]


def test_flop_costs_are_what_removing_groups_saves(arch):
    """The prices of the default budget (`sparsity_budget="flops"`), counted on meta and fake tensors, equal what the
    real model computes: the dense FLOPs, the FLOPs saved by removing a group of two families, and by removing a KV
    group with its query heads; a model pruned in memory is priced at its own widths. Eager attention,
    whose matmuls the counter sees on any device; no key-value cache, as in training, where transformers looks for
    packed sequences."""
    model = copy.deepcopy(arch.model)
    model.set_attn_implementation("eager")
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    inputs = user_inputs(model)
    dense, costs = group_flop_costs(model, arch.groups, inputs)
    assert dense == count_flops(model, inputs)
    assert len(costs) == len(arch.groups) and min(costs) > 0
    # Two families that slice no tensor in common: the weights between two that do would be priced in both. Prices add
    # up: a KV group with its query heads saves its price plus theirs.
    first, *others = list(arch.groups.families().values())
    tensors = {s.name for s in first[0].slices}
    last = next(members for members in reversed(others) if tensors.isdisjoint(s.name for s in members[0].slices))
    ids = _removal_unit(arch.groups, first) + _removal_unit(arch.groups, last)
    smaller = construct_subnet(model, arch.groups, ids, example_inputs=inputs)
    assert dense - count_flops(smaller, inputs) == sum(costs[i] for i in ids)
    assert group_flop_costs(smaller, GroupSet([]), inputs)[0] == count_flops(smaller, inputs)  # pruned in memory
    kv = next((members for members in others if members[0].kind == "kv_head"), None)
    if kv is not None:  # grouped-query attention
        unit = _removal_unit(arch.groups, kv)
        smaller = construct_subnet(model, arch.groups, unit, example_inputs=inputs)
        assert dense - count_flops(smaller, inputs) == sum(costs[i] for i in unit)


def _removal_unit(groups: GroupSet, members: list) -> list[int]:
    """One group of a family; for query heads nested in KV groups, one of each KV group (fewer are padded back); for a
    KV group, with its query heads (removed with it)."""
    if members[0].kind == "kv_head":
        return [members[0].id] + [child.id for child in groups.nests()[members[0].nest][1]]
    if members[0].nest is not None:
        return list({group.nest: group.id for group in reversed(members)}.values())
    return [members[0].id]


def _texts(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """Four padded token sequences with their labels, as a causal-LM training set."""
    batch = user_inputs(model)
    rows = [{key: value[i % 2] for key, value in batch.items()} for i in range(4)]
    return [{**row, "labels": row["input_ids"].masked_fill(row["attention_mask"] == 0, -100)} for row in rows]


@pytest.mark.parametrize("case", CAUSAL_LMS, ids=[case.name for case in CAUSAL_LMS])
def test_trainer_trains_a_causal_lm_with_the_default_budget(case, tmp_path):
    """Groups traced on a training batch and priced in FLOPs (the default budget); DHSPG removes the target FLOPs. With
    grouped-query attention the deadline also zeroes the query heads that even out the KV groups of a layer (at most
    `KV groups - 1` times `query heads per KV group - 1` per layer), so that nothing is padded back."""
    torch.manual_seed(0)
    args = OTOTrainingArguments(
        str(tmp_path), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3, target_sparsity=0.3,
        partition_steps=1, pruning_end_steps=3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        disable_tqdm=True,
    )  # fmt: skip
    model = case.build()
    trainer = OTOTrainer(model, args, train_dataset=_texts(model))
    assert trainer.args.sparsity_budget == "flops"
    assert trainer.dense_flops > 0 and min(trainer.group_flops) > 0
    trainer.train()
    zero = trainer.groups.zero_group_ids(trainer.model)
    removed = sum(trainer.group_flops[i] for i in zero) / trainer.dense_flops
    evened = 0.0
    if _kv_heads(case):
        config = model.config
        per_kv = config.num_attention_heads // config.num_key_value_heads
        head = max(trainer.group_flops[g.id] for g in trainer.groups if g.kind == "head")
        evened = config.num_hidden_layers * (config.num_key_value_heads - 1) * (per_kv - 1) * head
        assert not plan_removal(trainer.groups, zero).padded
    slack = (max(trainer.group_flops) + evened) / trainer.dense_flops
    assert 0.3 - 1e-9 <= removed < 0.3 + slack  # DHSPG's exact rule


def _scenario_ids(groups: GroupSet, scenario: str) -> list[int]:
    """Group ids for a removal scenario, from the first two attention layers' KV groups (KV group, query heads).

    - `query_heads`: one query head of every KV group of layer 0; in layer 1 one query head of the first KV group
      (uneven: with several KV groups the others keep as many query heads, as zero padding);
    - `kv_group`: layer 0's first KV group; in layer 1 every query head of the last KV group (which goes too);
    - `both`: layer 0's first KV group and one query head of each other; one query head of every KV group in layer 1.
    """
    first, second = sorted(nested_families(groups).values(), key=lambda nests: nests[0][1][0].layer)[:2]
    if scenario == "query_heads":
        return [children[0].id for _, children in first] + [second[0][1][0].id]
    if scenario == "kv_group":
        return [first[0][0].id] + [child.id for child in second[-1][1]]
    return [first[0][0].id] + [children[0].id for _, children in first[1:] + second]


@pytest.mark.parametrize(("case", "scenario"), NESTED, ids=[f"{case.name}-{scenario}" for case, scenario in NESTED])
def test_nested_heads_are_removed_exactly(case, scenario, tmp_path):
    """Query heads and KV groups removed as `plan_removal` says: the subnet equals the zero-masked model, the KV
    groups of a layer keep equally many query heads (`num_key_value_groups` follows), the saved folder reloads, and
    greedy generation with the key-value cache gives the zero-masked model's tokens, before and after reloading."""
    torch.manual_seed(0)
    model = case.build().eval()
    groups = discover_groups(model)
    ids = _scenario_ids(groups, scenario)
    plan = plan_removal(groups, ids)
    if scenario == "kv_group":  # the KV group asked for takes its query heads; the emptied one goes too
        assert {groups[i].kind for i in plan.implied} == {"head", "kv_head"}
    if scenario == "query_heads" and _kv_heads(case) > 1:
        assert len(plan.padded) == _kv_heads(case) - 1  # layer 1's other KV groups keep their query heads
    pruned = assert_zero_invariant(model, groups, ids)
    heads = {layer.layer: layer for layer in pruned.oto_pruning.layers if layer.kind == "head"}
    for layer in pruned.oto_pruning.layers:
        if layer.kind == "kv_head":
            assert heads[layer.layer].kept % layer.kept == 0, "uneven query heads per KV group"
    masked = masked_copy(model, groups, ids)
    assert_same_greedy_tokens(pruned, masked)
    reloaded = assert_save_load_roundtrip(pruned, tmp_path / "pruned", auto_class=case.auto_class)
    assert_same_greedy_tokens(reloaded, masked)


_GENERATE_WITHOUT_OTO_HF = r"""
import json, sys, torch, transformers
sys.modules["oto_hf"] = None  # oto_hf must not be importable here
folder, prompt, new_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
ids = torch.tensor(prompt)
tokens = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
print(json.dumps(tokens.tolist()))
"""


@pytest.mark.slow
def test_smollm2_query_heads_nest_and_the_pruned_model_generates_exactly(tmp_path):
    """The real SmolLM2-135M (`OTO_HF_CACHE`, `scripts/assets.fetch_smollm2`): 9 query heads in 3 KV groups and 1,536
    neurons in each of its 30 layers. Pruned unevenly across layers (0 to 2 query heads per KV group, a KV group in
    every fifth layer, one query head alone in layer 27: padded back), it generates the zero-masked model's
    greedy tokens with the key-value cache, and so does its saved folder, reloaded with oto_hf and without it."""
    import assets  # scripts/, on the path in tests

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    folder = assets.fetch_smollm2()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = AutoTokenizer.from_pretrained(folder)("The capital of Italy is", return_tensors="pt")
    groups = discover_groups(model, dict(prompt))
    assert groups.counts_per_layer() == {layer: {"head": 9, "kv_head": 3, "neuron": 1536} for layer in range(30)}
    families = sorted(nested_families(groups).values(), key=lambda nests: nests[0][1][0].layer)
    assert len(families) == 30 and all([len(children) for _, children in nests] == [3, 3, 3] for nests in families)

    ids: list[int] = []
    for layer, nests in enumerate(families):
        ids += [child.id for _, children in nests for child in children[: layer % 3]]
        if layer % 5 == 0:
            ids.append(nests[layer % 3][0].id)
    ids.append(families[27][0][1][0].id)  # one query head alone: the other KV groups keep 3, so it is padded back
    neurons = [g for g in groups if g.kind == "neuron"]
    ids += [g.id for g in neurons if g.id % 7 < g.layer % 4]
    plan = plan_removal(groups, ids)
    assert len(plan.padded) == 1 and plan.implied
    pruned = construct_subnet(model, groups, ids)  # checked against the zero-masked model on the prompt
    attention = pruned.model.layers[5].self_attn
    assert (attention.num_key_value_groups, attention.k_proj.out_features // 64) == (1, 2)  # 2 of 3 heads gone
    masked = masked_copy(model, groups, ids)

    settings = dict(max_new_tokens=16, do_sample=False, use_cache=True)
    expected = masked.generate(**prompt, **settings)
    assert torch.equal(pruned.generate(**prompt, **settings), expected)
    saved = save_pruned(pruned, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(saved).eval()
    assert torch.equal(reloaded.generate(**prompt, **settings), expected)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [str(saved), json.dumps(prompt["input_ids"].tolist()), "16"]
    result = subprocess.run(
        [sys.executable, "-c", _GENERATE_WITHOUT_OTO_HF, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected.tolist()
