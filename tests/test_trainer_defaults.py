"""OTOTrainer's defaults for quality: a FLOPs budget reached with no forced zero, families that disconnect the output
kept, per-kind logs, and distillation from a frozen teacher."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from oto_hf import DHSPG, OTOTrainer, OTOTrainingArguments
from oto_hf.bottlenecks import bottleneck_families
from oto_hf.distillation import distillation_loss
from oto_hf.graph.discover import discover_groups
from tests.utils.data import TinyClassification
from tests.utils.train_tiny import tiny_model


def default_args(output_dir: str, **overrides) -> OTOTrainingArguments:
    """The OTO defaults (FLOPs budget, progressive DHSPG, Fisher importance); only the run's size is set."""
    values = dict(
        max_steps=30,
        per_device_train_batch_size=8,
        learning_rate=2e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=3,
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    return OTOTrainingArguments(output_dir, **values)


def pooler_key(groups) -> tuple:
    return next(key for key in groups.families() if key[0][0].startswith("bert.pooler"))


def test_bottleneck_families_are_the_pooler_not_the_residual_blocks():
    model = tiny_model(dropout=0.0)
    inputs = {"input_ids": TinyClassification(size=2).input_ids}
    groups = discover_groups(model, inputs)
    before = copy.deepcopy(model.state_dict())
    found = bottleneck_families(model, groups, inputs)
    assert found == [pooler_key(groups)]  # emptying an FFN or a head family keeps the residual path
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights restored exactly
    # Nothing to perturb (no ids, no floating input): no check, no claim.
    assert bottleneck_families(model, groups, {"attention_mask": torch.ones(1, 4, dtype=torch.long)}) == []


def test_defaults_reach_the_flops_target_with_no_forced_zero_and_keep_the_pooler(tmp_path):
    args = default_args(str(tmp_path), target_sparsity=0.4)
    assert (args.sparsity_budget, args.dhspg_lambda_schedule, args.dhspg_saliency) == (
        "flops",
        "progressive",
        "fisher",
    )
    trainer = OTOTrainer(tiny_model(), args, train_dataset=TinyClassification())
    assert trainer.never_empty == [pooler_key(trainer.groups)]
    trainer.train()
    zero = set(trainer.groups.zero_group_ids(trainer.model))
    removed = sum(trainer.group_flops[i] for i in zero) / trainer.dense_flops
    assert removed >= 0.4
    logs = [h for h in trainer.state.log_history if "dhspg/forced_zero" in h]
    assert logs[-1]["dhspg/forced_zero"] == 0 and logs[-1]["dhspg/natural_zero"] == len(zero)
    assert logs[-1]["kept_flops"] <= 0.6
    kinds = trainer.groups.counts()
    for kind, total in kinds.items():
        assert logs[-1][f"sparsity/{kind}"] == round(sum(trainer.groups[i].kind == kind for i in zero) / total, 4)
    # Every family keeps at least 10% of its groups (max_family_sparsity 0.9), the pooler at least one.
    for key, members in trainer.groups.families().items():
        kept = sum(g.id not in zero for g in members)
        assert kept >= max(1, len(members) - int(0.9 * len(members))), key


def test_a_loss_jump_while_groups_go_is_logged(tmp_path, caplog):
    trainer = OTOTrainer(tiny_model(), default_args(str(tmp_path)), train_dataset=TinyClassification())
    trainer.state.global_step = 7
    with caplog.at_level(logging.WARNING):
        trainer._warn_on_loss_jump(0.30, num_zero=0)
        trainer._warn_on_loss_jump(0.31, num_zero=5)  # groups went, the loss held: quiet
        trainer._warn_on_loss_jump(0.90, num_zero=9)
        trainer._warn_on_loss_jump(2.00, num_zero=9)  # no group went: not a pruning shock
    assert caplog.text.count("the training loss rose") == 1
    assert "from 0.3100 to 0.9000 while 4 groups became zero" in caplog.text


def test_distillation_loss_is_a_softened_kl_plus_hidden_mse():
    student = {"logits": torch.tensor([[2.0, 0.0]]), "hidden_states": (torch.zeros(1, 3), torch.ones(1, 3))}
    teacher = {"logits": torch.tensor([[0.0, 2.0]]), "hidden_states": (torch.ones(1, 3), torch.ones(1, 3))}
    t = 2.0
    p_teacher = torch.softmax(teacher["logits"] / t, -1)
    p_student = torch.softmax(student["logits"] / t, -1)
    expected = (p_teacher * (p_teacher.log() - p_student.log())).sum() * t**2
    torch.testing.assert_close(distillation_loss(student, teacher, t), expected)
    torch.testing.assert_close(distillation_loss(student, teacher, t, hidden_weight=0.5), expected + 0.5 * 0.5)
    assert float(distillation_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="Distillation needs logits"):
        distillation_loss({"x": torch.ones(1)}, {"x": torch.ones(1)}, t)


def test_distillation_from_the_dense_start_trains_with_a_frozen_teacher_that_is_never_saved(tmp_path):
    args = default_args(
        str(tmp_path),
        target_sparsity=0.3,
        distillation="dense",
        distillation_alpha=0.7,
        distillation_hidden_weight=0.1,
    )
    model = tiny_model()
    start = copy.deepcopy(model.state_dict())
    trainer = OTOTrainer(model, args, train_dataset=TinyClassification())
    teacher = trainer.teacher
    assert teacher is not None and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    trainer.train()
    assert all(torch.equal(teacher.state_dict()[k], start[k]) for k in start)  # the teacher never moved
    # The training loss is the mix, not the task loss alone: a run without the teacher logs other losses.
    plain = OTOTrainer(
        tiny_model(), default_args(str(tmp_path / "plain"), target_sparsity=0.3), train_dataset=TinyClassification()
    )
    plain.train()
    assert trainer.state.log_history[0]["loss"] != plain.state.log_history[0]["loss"]
    pruned_dir = tmp_path / "pruned"
    trainer.save_pruned(pruned_dir)
    saved = {p.name for p in pruned_dir.iterdir()}
    assert "teacher" not in " ".join(saved) and sum(n.endswith(".safetensors") for n in saved) == 1


def test_a_teacher_passed_in_wins_and_is_frozen(tmp_path):
    teacher = tiny_model(seed=3)
    trainer = OTOTrainer(
        tiny_model(), default_args(str(tmp_path)), train_dataset=TinyClassification(), teacher=teacher
    )
    assert trainer.teacher is teacher and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("overrides, message", [
    (dict(distillation=""), "`distillation` must be 'off', 'dense' or a teacher's path"),
    (dict(distillation_alpha=1.5), r"`distillation_alpha` must be in \[0, 1\]"),
    (dict(distillation_temperature=0.0), "`distillation_temperature` must be > 0"),
    (dict(max_family_sparsity=0.0), r"`max_family_sparsity` must be in \(0, 1\]"),
    (dict(dhspg_saliency="magnitude"), "`dhspg_saliency` must be one of"),
    (dict(importance_window=-1), "`importance_window` must be >= 0"),
])  # fmt: skip
def test_bad_quality_arguments(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        default_args(str(tmp_path), **overrides)


def test_group_flop_costs_serve_dhspg_without_the_trainer():
    from oto_hf import construct_subnet, count_flops, group_flop_costs

    model = tiny_model(dropout=0.0)
    inputs = {"input_ids": TinyClassification(size=2).input_ids}
    groups = discover_groups(model, inputs)
    dense, costs = group_flop_costs(model, groups, inputs)
    head = next(g.id for g in groups if g.kind == "head")
    neuron = next(g.id for g in groups if g.kind == "neuron")
    # A neuron: one row of the 32-wide up projection and one column of the down projection, 2 FLOPs per MAC, 24 tokens.
    assert costs[neuron] == 2 * (32 + 32) * 24 and costs[head] > 12 * costs[neuron]
    # Counted on the meta device (where attention's matmuls are counted too); removing groups of two families saves
    # the sum of their costs.
    meta_inputs = {"input_ids": inputs["input_ids"].to("meta")}
    meta = copy.deepcopy(model).to("meta")
    assert dense == count_flops(meta, meta_inputs)
    smaller = construct_subnet(meta, groups, [head, neuron], verify=False)
    assert dense - count_flops(smaller, meta_inputs) == costs[head] + costs[neuron]
    optimizer = DHSPG.from_model(model, groups, sparsity_budget="flops", group_costs=costs, budget_total=dense,
                                 target_sparsity=0.3, pruning_end_steps=10)  # fmt: skip
    assert optimizer.sparsity_budget == "flops"


def test_dhspg_settings_share_names_with_the_training_arguments():
    """Every OTO field is a DHSPG keyword argument under the shared name, or listed as the trainer's own."""
    import inspect

    from oto_hf.training_args import TRAINER_ONLY_FIELDS, oto_field_names

    args = OTOTrainingArguments("out", dhspg_lambda=0.5, min_neurons_per_layer=2, importance_window=0, report_to=[])
    kwargs = args.dhspg_kwargs(100)
    accepted = set(inspect.signature(DHSPG).parameters)
    assert set(kwargs) <= accepted
    assert kwargs["lambda_"] == 0.5 and kwargs["min_neurons_per_layer"] == 2 and kwargs["importance_window"] is None
    assert (kwargs["partition_steps"], kwargs["pruning_end_steps"]) == args.pruning_schedule(100) == (10, 50)
    mapped = {name for name in oto_field_names() if name not in TRAINER_ONLY_FIELDS}
    assert len(mapped) == len(kwargs) and not set(TRAINER_ONLY_FIELDS) & accepted
