"""Distillation: the loss (`oto_hf.distillation`) and `OTOTrainer` distilling from a frozen teacher."""

from __future__ import annotations

import copy

import pytest
import torch

from oto_hf import OTOTrainer
from oto_hf.distillation import distillation_loss
from tests.utils.data import TinyClassification
from tests.utils.train_tiny import tiny_args, tiny_model


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
    args = tiny_args(str(tmp_path), distillation="dense", distillation_alpha=0.7, distillation_hidden_weight=0.1)
    model = tiny_model()
    start = copy.deepcopy(model.state_dict())
    trainer = OTOTrainer(model, args, train_dataset=TinyClassification())
    teacher = trainer.teacher
    assert teacher is not None and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    trainer.train()
    assert all(torch.equal(teacher.state_dict()[k], start[k]) for k in start)  # the teacher never moved
    # The training loss is the mix, not the task loss alone: a run without the teacher logs other losses.
    plain = OTOTrainer(tiny_model(), tiny_args(str(tmp_path / "plain")), train_dataset=TinyClassification())
    plain.train()
    assert trainer.state.log_history[0]["loss"] != plain.state.log_history[0]["loss"]
    pruned_dir = tmp_path / "pruned"
    trainer.save_pruned(pruned_dir)
    saved = {p.name for p in pruned_dir.iterdir()}
    assert "teacher" not in " ".join(saved) and sum(n.endswith(".safetensors") for n in saved) == 1


def test_a_teacher_passed_in_wins_and_is_frozen(tmp_path):
    teacher = tiny_model(seed=3)
    trainer = OTOTrainer(tiny_model(), tiny_args(str(tmp_path)), train_dataset=TinyClassification(), teacher=teacher)
    assert trainer.teacher is teacher and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
