"""Knowledge distillation into the model being pruned: the teacher, and the loss that mixes it with the task's."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Outputs distilled with a softened KL divergence, when both models return them.
LOGIT_KEYS = ("logits", "start_logits", "end_logits")


def load_teacher(source: str, student: nn.Module) -> nn.Module:
    """The frozen teacher for `OTOTrainingArguments.distillation`: `"dense"` copies the student as it is now (before
    any pruning step); anything else is loaded with the student's class from a path or Hub name."""
    if source == "dense":
        teacher = copy.deepcopy(student)
    else:
        from_pretrained = getattr(type(student), "from_pretrained", None)
        if from_pretrained is None:
            raise ValueError(
                f"`distillation={source!r}` loads a teacher with `{type(student).__name__}.from_pretrained`, which "
                "this model lacks; pass the teacher itself as `OTOTrainer(teacher=...)`."
            )
        teacher = from_pretrained(source)
    return freeze(teacher)


def freeze(teacher: nn.Module) -> nn.Module:
    """Eval mode and no gradients, for good."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def distillation_loss(
    student_outputs: Any,
    teacher_outputs: Any,
    temperature: float,
    hidden_weight: float = 0.0,
) -> torch.Tensor:
    """KL divergence between softened teacher and student distributions over every logit output both return (scaled
    by `temperature**2`, averaged over positions), plus `hidden_weight` times the mean-squared error of the hidden
    states, averaged over layers."""
    terms = []
    for key in LOGIT_KEYS:
        student, teacher = _get(student_outputs, key), _get(teacher_outputs, key)
        if student is None or teacher is None:
            continue
        student = F.log_softmax(student.float() / temperature, dim=-1).flatten(0, -2)
        teacher = F.log_softmax(teacher.float() / temperature, dim=-1).flatten(0, -2)
        terms.append(F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2)
    if not terms:
        raise ValueError(
            f"Distillation needs logits: neither model returned any of {LOGIT_KEYS}. Turn `distillation` off for "
            "this model."
        )
    loss = torch.stack(terms).mean()
    if hidden_weight:
        student_states, teacher_states = _get(student_outputs, "hidden_states"), _get(teacher_outputs, "hidden_states")
        if not student_states or not teacher_states:
            raise ValueError("`distillation_hidden_weight` > 0 needs models that return `hidden_states`.")
        mse = [F.mse_loss(s.float(), t.float()) for s, t in zip(student_states, teacher_states)]
        loss = loss + hidden_weight * torch.stack(mse).mean()
    return loss


def _get(outputs: Any, key: str) -> Any:
    if isinstance(outputs, dict):
        return outputs.get(key)
    return getattr(outputs, key, None)
