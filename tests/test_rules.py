"""Extending discovery with a rule for a custom op, and what unknown ops do."""

import pytest
import torch
from torch import nn

from oto_hf import construct_subnet, discover_groups, register_op_rule, rules
from oto_hf.graph.rules import _RULES


@torch.library.custom_op("oto_hf_test::scaled_gelu", mutates_args=())
def scaled_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x) * 1.5


@scaled_gelu.register_fake
def _(x):
    return torch.empty_like(x)


class CustomMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(6, 9), nn.Linear(9, 4)

    def forward(self, x):
        return self.down(scaled_gelu(self.up(x)))


@pytest.fixture
def restore_rules():
    saved = dict(_RULES)
    yield
    _RULES.clear()
    _RULES.update(saved)


def test_unknown_op_is_unprunable_with_a_reason():
    with pytest.raises(ValueError, match=r"(?s)nothing prunable.*unsupported op.*register_op_rule.*oto_hf_test.scaled_gelu"):
        discover_groups(CustomMLP(), example_inputs=(torch.randn(2, 6),))


def test_registered_rule_makes_it_prunable(restore_rules):
    register_op_rule(torch.ops.oto_hf_test.scaled_gelu.default, rules.unary)
    model = CustomMLP().eval()
    inputs = (torch.randn(2, 6),)
    groups = discover_groups(model, example_inputs=inputs)
    assert groups.counts() == {"neuron": 9}
    pruned = construct_subnet(model, groups, [1, 4, 7])
    assert pruned.up.out_features == 6 and pruned.down.in_features == 6


def test_register_op_rule_checks_its_argument():
    with pytest.raises(TypeError, match="`rule` must be callable"):
        register_op_rule(torch.ops.aten.relu.default, "unary")


def test_concatenation_with_unprunable_data_is_caught():
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(4, 5), nn.Linear(8, 2)

        def forward(self, x):
            return self.down(torch.cat([self.up(x), x[:, :3]], dim=-1))

    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(4, 5), nn.Linear(7, 2)

        def forward(self, x):
            return self.down(torch.nn.functional.pad(self.up(x), (0, 2)))

    # Channels concatenated with the input (or padded) still slice cleanly along the channel dim: they stay prunable,
    # and removing them is exact.
    for module in (Concat(), Padded()):
        inputs = (torch.randn(3, 4),)
        groups = discover_groups(module.eval(), example_inputs=inputs)
        assert groups.counts() == {"neuron": 5}
        construct_subnet(module, groups, [0, 2])


def test_channels_mixed_with_a_constant_along_the_channel_dim_stay_unprunable():
    class AddConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(4, 5), nn.Linear(5, 2)
            self.register_buffer("offset", torch.arange(5.0), persistent=False)

        def forward(self, x):
            return self.down(self.up(x) + torch.ones(5) * 2)

    with pytest.raises(ValueError, match="nothing prunable"):
        discover_groups(AddConstant(), example_inputs=(torch.randn(3, 4),))
