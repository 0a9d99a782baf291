"""DHSPG with query heads nested in KV groups: at the deadline, every KV group of a layer keeps as many query heads, so
the model is built as trained (`oto_hf.optim.nesting`)."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from oto_hf import DHSPG, GroupSet, construct_subnet, discover_groups, group_flop_costs
from oto_hf.graph.nesting import nested_families, plan_removal
from oto_hf.optim.nesting import QueryHeadNests
from oto_hf.utils import as_args_kwargs
from tests.utils.tiny_models import TEXT, user_inputs


@pytest.fixture(scope="module")
def llama():
    """A 4-layer LLaMA with 8 query heads in 2 KV groups per layer, eager attention, its groups and FLOP prices."""
    torch.manual_seed(0)
    config = LlamaConfig(**{**TEXT, "num_attention_heads": 8, "num_hidden_layers": 4}, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("eager")
    model.config.use_cache = False
    groups = discover_groups(model)
    dense, costs = group_flop_costs(model, groups, user_inputs(model))
    return model, groups, dense, costs


class _Families:
    """What `even_out` reads of `FamilyConstraints`: one family per group, no exact quotas, room as given."""

    exact = False

    def __init__(self, groups: GroupSet, room: int) -> None:
        self.family_of = torch.arange(len(groups))
        heads = [g.id for g in groups if g.kind == "head"]
        self.family_of[heads] = heads[0]  # every query head in one family
        self.max_zero = torch.full((len(groups),), room)

    def zero_counts(self, zero: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(zero), dtype=torch.long).index_add_(0, self.family_of, zero.long())


def test_even_out_zeroes_the_most_redundant_query_heads_of_the_less_pruned_kv_groups(llama):
    _, groups, _, _ = llama
    nests = QueryHeadNests.from_groups(groups.groups)
    assert len(nests.layers) == 4 and all(len(layer) == 2 for layer in nests.layers)
    (_, first), (_, second) = sorted(nested_families(groups).values(), key=lambda n: n[0][1][0].layer)[0]
    zero = torch.zeros(len(groups), dtype=torch.bool)
    zero[[first[0].id, first[1].id]] = True  # two query heads of the first KV group, none of the second
    scores = torch.arange(len(groups), dtype=torch.float64)
    scores[second[0].id] = 1e9  # the most redundant of the second KV group
    chosen = nests.even_out(zero, torch.zeros_like(zero), scores, _Families(groups, room=len(groups)))
    assert chosen.nonzero().flatten().tolist() == sorted([second[0].id, second[-1].id])
    assert not plan_removal(groups, (zero | chosen).nonzero().flatten().tolist()).padded
    # No room left in the layer's query-head family (e.g. `min_heads_per_layer`): left to padding.
    unchanged = nests.even_out(zero, torch.zeros_like(zero), scores, _Families(groups, room=2))
    assert not unchanged.any()


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_dhspg_builds_what_it_trained_and_meets_the_flops_target(llama, target):
    """Trained with the FLOPs budget, the zero set needs no padding, and the built model removes at least the target
    (priced like the budget)."""
    model, groups, dense, costs = llama
    model = copy.deepcopy(model).train()
    optimizer = DHSPG.from_model(
        model, groups, lr=1e-2, target_sparsity=target, partition_steps=2, pruning_end_steps=12,
        sparsity_budget="flops", group_costs=costs, budget_total=dense,
    )  # fmt: skip
    args, kwargs = as_args_kwargs(groups.example_inputs)
    generator = torch.Generator().manual_seed(0)
    for _ in range(14):
        targets = torch.randint(0, model.config.vocab_size, kwargs["input_ids"].shape, generator=generator)
        loss = torch.nn.functional.cross_entropy(model(*args, **kwargs).logits.flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    zero = groups.zero_group_ids(model)
    assert zero == optimizer.zero_group_ids() and any(groups[i].kind == "head" for i in zero)
    assert not plan_removal(groups, zero).padded
    assert optimizer.num_forced_zero_groups == 0  # the heads that even out the KV groups ramped down with the rest
    pruned = construct_subnet(model.eval(), groups, zero, allow_empty_layers=True)
    built, _ = group_flop_costs(pruned, GroupSet([]), user_inputs(model))
    assert 1 - built / dense >= target
