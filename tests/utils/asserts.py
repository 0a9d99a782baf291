"""Shared checks (PEFT's `testing_common.py` role): masks, groups, zero-invariance, save/reload, a training run.

`tests/test_architectures.py` runs every case of `tests/utils/tiny_models.CASES` through them; other tests use them
for their special cases.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

import oto_hf
from oto_hf import DHSPG, GroupSet, construct_subnet, count_parameters, save_pruned
from oto_hf.graph.nesting import plan_removal
from oto_hf.stats import forward_outputs
from oto_hf.utils import as_args_kwargs


def random_nonuniform_ids(groups: GroupSet, seed: int = 0) -> list[int]:
    """A different number of groups per family (layer and block), never all of one family, at least one somewhere."""
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for position, family in enumerate(groups.families().values()):
        members = [group.id for group in family]
        if len(members) < 2:
            continue
        count = 1 + (position + int(torch.randint(0, len(members) - 1, (1,), generator=generator))) % (
            len(members) - 1
        )
        order = torch.randperm(len(members), generator=generator)[:count]
        chosen += [members[i] for i in order.tolist()]
    return sorted(chosen)


def masked_copy(model: nn.Module, groups: GroupSet, ids: list[int]) -> nn.Module:
    """A copy of `model` with the parameters of groups `ids` set to zero."""
    masked = copy.deepcopy(model)
    groups.zero_(masked, ids)
    return masked


def max_output_diff(a: nn.Module, b: nn.Module, inputs: Any) -> float:
    """Largest absolute difference between the floating-point outputs of `a` and `b` (eval mode, no grad)."""
    outputs_a, _ = forward_outputs(a, inputs)
    outputs_b, _ = forward_outputs(b, inputs)
    assert len(outputs_a) == len(outputs_b)
    return max(float((x - y).abs().max()) for x, y in zip(outputs_a, outputs_b))


def assert_groups_valid(
    groups: GroupSet,
    model: nn.Module,
    *,
    expected: dict[str, int] | None = None,
    per_layer: dict[str, int] | None = None,
) -> None:
    """Ids are positions; every group slices real tensors inside their bounds; no entry is in two groups; the parts
    that cannot be pruned (residual stream, outputs) are reported. With `expected` (groups per kind) and `per_layer`
    (groups per kind in each of layers 0 and 1), the counts match them."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers())
    seen: Counter = Counter()
    for index, group in enumerate(groups):
        assert group.id == index
        assert group.num_params > 0 and group.slices, group
        for name, dim, indices in [*group.slices, *group.buffer_slices]:
            assert name in tensors, name
            assert indices.dtype == torch.long and int(indices.max()) < tensors[name].shape[dim], (name, dim)
            for i in indices.tolist():
                seen[(name, dim, i)] += 1
    assert max(seen.values()) == 1, "an entry belongs to two groups"
    assert groups.unprunable, "the residual stream / outputs must be reported as unprunable"
    if expected is not None:
        assert groups.counts() == expected
    if per_layer:
        for layer, counts in groups.counts_per_layer().items():
            if layer is not None and layer < 2:
                assert counts == per_layer, f"layer {layer}"


def assert_zero_invariant(model: nn.Module, groups: GroupSet, ids: list[int], atol: float = 1e-5) -> nn.Module:
    """`construct_subnet` removes groups `ids` exactly: the smaller model of the same class computes what `model`
    computes with those groups zeroed, has the removed parameters fewer and records what was removed. Returns it.

    With query heads nested in KV groups, what is removed is `plan_removal`'s: implied groups go too, padding stays."""
    pruned = construct_subnet(model, groups, ids)
    assert type(pruned) is type(model)
    plan = plan_removal(groups, ids)
    removed = sum(groups[i].num_params for i in plan.removed)
    sliced_twice = any(
        len({s.dim for g in groups for s in g.slices if s.name == name}) > 1 for name, _ in model.named_parameters()
    )
    if sliced_twice:  # a conv weight loses rows to one group and columns to another: their overlap counts once
        assert count_parameters(model) - removed <= count_parameters(pruned) < count_parameters(model)
    else:
        assert count_parameters(pruned) == count_parameters(model) - removed
    diff = max_output_diff(pruned, masked_copy(model, groups, ids), groups.example_inputs)
    assert diff <= atol, f"the pruned model differs from the zero-masked one by {diff}"
    record = pruned.oto_pruning
    assert record.params_after == count_parameters(pruned)
    assert record.flops_after < record.flops_before or not plan.removed
    assert sum(record.removed_groups.values()) == len(plan.removed)
    assert sum(layer.padded for layer in record.layers) == len(plan.padded)
    return pruned


def assert_save_load_roundtrip(
    pruned: transformers.PreTrainedModel,
    tmp_path: Path,
    atol: float = 1e-6,
    *,
    auto_class: str,
    inputs: Any = None,
) -> transformers.PreTrainedModel:
    """`save_pruned` writes a folder that `transformers.<auto_class>` reloads with every weight used and none missing,
    into a model of (a subclass of) the pruned class with the same outputs; the config carries `oto_hf_version`.
    Non-uniform widths are saved as `oto_<model_type>`, loaded as `OTO<Class>`. Returns the reloaded model."""
    inputs = oto_hf.default_example_inputs(pruned) if inputs is None else inputs
    folder = save_pruned(pruned, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["oto_hf_version"] == oto_hf.__version__
    assert (folder / "model.safetensors").exists()
    loaded, info = getattr(transformers, auto_class).from_pretrained(folder, output_loading_info=True)
    assert isinstance(loaded, type(pruned))
    if config["model_type"].startswith("oto_"):
        assert config["model_type"] == f"oto_{pruned.config.model_type}"
        assert config["architectures"] == [f"OTO{type(pruned).__name__}"]
        assert type(loaded).__name__ == f"OTO{type(pruned).__name__}"
    else:
        assert config["model_type"] == pruned.config.model_type and type(loaded) is type(pruned)
    # Stock classes reload their own dense checkpoints with all three lists empty (every CASES model, GPT-NeoX).
    assert {key: info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")} == {
        "missing_keys": set(),
        "unexpected_keys": set(),
        "mismatched_keys": set(),
    }, info
    diff = max_output_diff(pruned, loaded, inputs)
    assert diff <= atol, f"the reloaded model differs from the saved one by {diff}"
    return loaded


def assert_trains(model: nn.Module, groups: GroupSet, steps: int = 3, target_sparsity: float = 0.3) -> None:
    """`steps` DHSPG steps on a copy of `model` (loss: mean square of its first output) end with exactly the target
    number of zero groups, as seen by both the optimizer and `groups`, and every other group trained."""
    model = copy.deepcopy(model).train()
    optimizer = DHSPG.from_model(
        model, groups, lr=1e-2, target_sparsity=target_sparsity, partition_steps=0, pruning_end_steps=steps
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args, kwargs = as_args_kwargs(groups.example_inputs)
    for _ in range(steps):
        loss = model(*args, **kwargs)[0].float().square().mean()
        assert math.isfinite(float(loss.detach()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    zero = groups.zero_group_ids(model)
    assert len(zero) == math.floor(target_sparsity * len(groups) + 0.5)
    assert optimizer.zero_group_ids() == zero
    params = dict(model.named_parameters())
    for group in groups:
        if group.id not in zero:
            assert any(
                not torch.equal(params[name].index_select(dim, idx), before[name].index_select(dim, idx))
                for name, dim, idx in group.slices
            ), f"group {group.id} did not train"


def assert_same_greedy_tokens(
    model: transformers.PreTrainedModel, reference: transformers.PreTrainedModel, new_tokens: int = 6
) -> torch.Tensor:
    """Greedy generation with the key-value cache (a prompt of two sequences) gives `reference`'s tokens. Returns
    them."""
    prompt = torch.randint(1, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True)
    tokens = model.generate(prompt, attention_mask=torch.ones_like(prompt), pad_token_id=0, **settings)
    expected = reference.generate(prompt, attention_mask=torch.ones_like(prompt), pad_token_id=0, **settings)
    assert tokens.shape == (2, 5 + new_tokens) and torch.equal(tokens, expected), (tokens, expected)
    return tokens
