"""The operators of each architecture of `tests/utils/tiny_models.CASES`, found once per test process (discovery and
`find_operators` with its erasing check take seconds per architecture). Tests copy what they change."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from oto_hf import GroupSet, Operator, discover_groups, find_operators
from tests.utils.tiny_models import CASES_BY_NAME


@dataclass(frozen=True)
class Found:
    """One architecture's model (eval mode, seed 0), its groups and its operators."""

    model: nn.Module
    groups: GroupSet
    operators: list[Operator]


@cache
def found_operators(name: str) -> Found:
    torch.manual_seed(0)
    model = CASES_BY_NAME[name].build().eval()
    groups = discover_groups(model)
    return Found(model, groups, find_operators(model, groups))
