"""H2SPG inside DHSPG: operators compete with single groups at each partition, an admitted operator's groups ramp to
zero together (its own tensors with them), narrowing keeps its limits, and the budget counts the operator's full
cost."""

from __future__ import annotations

import copy

import pytest
import torch

from oto_hf.erasing import erase_operators
from oto_hf.optim import DHSPG
from oto_hf.optim.operator_erasing import zero_operators
from tests.utils.asserts import max_output_diff
from tests.utils.operators import found_operators

SCHEDULE = dict(lr=1e-2, partition_steps=4, pruning_end_steps=24, num_partition_periods=4)


def _train(optimizer: DHSPG, model: torch.nn.Module, steps: int, watch=None) -> None:
    torch.manual_seed(0)
    tokens = torch.randint(0, 99, (4, 12))
    for step in range(steps):
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if watch is not None:
            watch(step)


def _llama(**settings):
    found = found_operators("llama")
    model = copy.deepcopy(found.model).train()
    optimizer = DHSPG.from_model(model, found.groups, operators=found.operators, **SCHEDULE, **settings)
    return found, model, optimizer


def test_a_high_target_under_narrowing_limits_erases_operators_whose_groups_go_to_zero_together():
    """60% of the groups with at most half of each family narrowed: narrowing alone cannot reach it, so operators
    are erased; each one's groups become zero at one step and its own tensors (the norms) with them, then stay zero;
    the erased model equals the trained one; narrowing kept its limits elsewhere."""
    found, model, optimizer = _llama(target_sparsity=0.6, max_family_sparsity=0.5, min_heads_per_layer=1)
    params = dict(model.named_parameters())
    first_zero: dict[int, int] = {}
    admitted: dict[int, int] = {}
    own_zero_from: dict[str, int] = {}

    def watch(step: int) -> None:
        for j in optimizer._erasing.erased:
            admitted.setdefault(j, step)
        for i in optimizer.zero_group_ids():
            first_zero.setdefault(i, step)
        for op in found.operators:
            for name in op.extra_params:
                if not params[name].any():
                    own_zero_from.setdefault(name, step)
                else:
                    assert name not in own_zero_from, f"{name} left zero at step {step}"

    _train(optimizer, model, 30, watch)
    erased = [found.operators[j] for j in optimizer._erasing.erased]
    assert erased, "narrowing alone cannot reach the target: some operator must be erased"
    for j in optimizer._erasing.erased:
        op = found.operators[j]
        # The groups still non-zero when it was admitted (a block may follow its part, or groups narrowed earlier)
        # reach zero at one step, its own tensors with them or with the part erased earlier.
        steps = {first_zero.get(i) for i in op.group_ids if first_zero.get(i, admitted[j]) >= admitted[j]}
        own = {own_zero_from.get(name) for name in op.extra_params}
        assert len(steps) == 1 and None not in steps and None not in own and max(own) <= max(steps)
    assert optimizer.group_sparsity() >= 0.6 - 1e-9
    members = {i for op in erased for i in op.group_ids}
    for family, count in zip(optimizer.families, optimizer.family_zero_counts()):
        if not set(family.group_ids) <= members:
            assert count <= family.max_zero  # narrowing's own limits held
    chosen = zero_operators(found.operators, optimizer.zero_group_ids(), params)
    assert {id(op) for op in chosen} == {id(op) for op in erased}
    model.eval()
    result = erase_operators(model, chosen, found.groups.example_inputs, zero_first=False)
    assert max_output_diff(result, model, found.groups.example_inputs) <= 1e-6


def test_the_budget_counts_an_erased_operators_own_tensors():
    """With the parameter budget, the removed fraction counts the erased operators' norms, which no group holds."""
    found, model, optimizer = _llama(target_sparsity=0.6, max_family_sparsity=0.5, sparsity_budget="params")
    _train(optimizer, model, 26)
    erased = [found.operators[j] for j in optimizer._erasing.erased]
    assert erased
    group_params = sum(found.groups[i].num_params for i in optimizer.zero_group_ids())
    own = sum(op.num_params - sum(found.groups[i].num_params for i in op.group_ids) for op in erased)
    total = sum(group.num_params for group in found.groups)
    assert own > 0 and optimizer.removed_fraction() == pytest.approx((group_params + own) / total)
    assert optimizer.removed_fraction() >= 0.6 - 1e-9


def test_erasing_off_narrows_only_and_no_family_empties():
    found, model, optimizer = _llama(target_sparsity=0.4, max_family_sparsity=0.5, erase=False)
    assert optimizer._erasing is None
    _train(optimizer, model, 26)
    assert all(count < family.size for family, count in zip(optimizer.families, optimizer.family_zero_counts()))
    with pytest.raises(ValueError, match="Unreachable target"):
        _llama(target_sparsity=0.6, max_family_sparsity=0.5, erase=False)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("uniform_widths", True), ("round_to", {"neuron": 4}), ("lambda_schedule", "constant"), ("saliency", "otov2")],
)
def test_erasing_refuses_settings_it_does_not_support(setting, value):
    with pytest.raises(ValueError, match=f"does not work with `{setting}="):
        _llama(target_sparsity=0.3, **{setting: value})
    _llama(target_sparsity=0.3, erase=False, **{setting: value})  # narrowing only: accepted


def test_erase_must_be_a_bool_and_settings_only_clash_with_operators():
    with pytest.raises(ValueError, match="`erase` must be a bool, got 'yes'"):
        _llama(target_sparsity=0.3, erase="yes")
    found = found_operators("llama")
    DHSPG.from_model(copy.deepcopy(found.model), found.groups, target_sparsity=0.3, uniform_widths=True, **SCHEDULE)


def test_an_unreachable_target_names_the_limits():
    found = found_operators("llama")
    blocks = [op for op in found.operators if op.kind != "block"][:1]  # one attention to erase, nothing else
    with pytest.raises(ValueError, match="can be removed with the narrowing limits"):
        DHSPG.from_model(copy.deepcopy(found.model), found.groups, operators=blocks, target_sparsity=0.6,
                         max_family_sparsity=0.5, **SCHEDULE)  # fmt: skip


def test_a_checkpoint_resumes_the_erasing_run_exactly(tmp_path):
    """Saved after the first partition (operators admitted) and loaded into a fresh optimizer, the run goes on as if
    it had not stopped: same operators, same weights to the last bit."""
    found, model, optimizer = _llama(target_sparsity=0.6, max_family_sparsity=0.5)
    _train(optimizer, model, 10)
    assert optimizer._erasing.erased
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    resumed_model = copy.deepcopy(model)
    resumed = DHSPG.from_model(resumed_model, found.groups, operators=found.operators, target_sparsity=0.6,
                               max_family_sparsity=0.5, **SCHEDULE)  # fmt: skip
    resumed.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    assert resumed.num_steps == optimizer.num_steps
    for run_model, run_optimizer in ((model, optimizer), (resumed_model, resumed)):
        _train(run_optimizer, run_model, 20)
    assert resumed._erasing.erased == optimizer._erasing.erased
    for (name, a), b in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), name
