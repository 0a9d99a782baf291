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
    with pytest.raises(
        ValueError, match=r"(?s)nothing prunable.*unsupported op.*register_op_rule.*oto_hf_test.scaled_gelu"
    ):
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


class HeadAttention(nn.Module):
    """Four heads of width 3 with optional per-head norm, per-head bias table and per-head gate bias."""

    def __init__(self, qk_norm: bool = False, bias_table: bool = False, gate_bias: bool = False):
        super().__init__()
        self.heads, self.head_dim = 4, 3
        self.q, self.k, self.v = (nn.Linear(8, 12) for _ in range(3))
        self.out = nn.Linear(12, 8)
        self.norm_weight = nn.Parameter(torch.rand(3) + 0.5) if qk_norm else None
        self.table = nn.Parameter(torch.randn(9, 4)) if bias_table else None
        self.register_buffer("index", torch.randint(0, 9, (5, 5)), persistent=False)
        self.gate = nn.Parameter(torch.randn(4)) if gate_bias else None

    def split(self, x):
        return x.view(1, 5, -1, self.head_dim).transpose(1, 2)

    def rms(self, x):
        return self.norm_weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def forward(self, x):
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        if self.norm_weight is not None:
            q, k = self.rms(q), self.rms(k)
        mask = self.table[self.index].permute(2, 0, 1).unsqueeze(0) if self.table is not None else None
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if self.gate is not None:
            out = out * torch.sigmoid(self.gate[None, :, None, None])
        return self.out(out.transpose(1, 2).reshape(1, 5, -1))


def _heads(groups):
    return [g for g in groups if g.kind == "head"]


def _exact(model, groups, ids):
    return construct_subnet(model, groups, ids)  # raises unless it equals the zero-masked model


def test_per_head_norm_keeps_head_groups_and_its_shared_weight_whole():
    model = HeadAttention(qk_norm=True).eval()
    groups = discover_groups(model, example_inputs=(torch.randn(1, 5, 8),))
    assert len(_heads(groups)) == 4
    assert not any(s.name == "norm_weight" for g in groups for s in g.slices)
    assert any("shared by several groups" in c.reason and "norm_weight" in c.tensors for c in groups.unprunable)
    pruned = _exact(model, groups, [_heads(groups)[1].id])
    assert pruned.q.out_features == 9 and pruned.norm_weight.shape == (3,)


def test_norm_over_all_heads_mixes_them():
    class WholeNorm(HeadAttention):
        def split(self, x):
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)  # over every head's channels
            return super().split(x)

    with pytest.raises(ValueError, match="(?s)nothing prunable.*reduction over a channel dimension"):
        discover_groups(WholeNorm().eval(), example_inputs=(torch.randn(1, 5, 8),), prune_kinds=["head"])


def test_relative_position_table_follows_its_head():
    model = HeadAttention(bias_table=True).eval()
    groups = discover_groups(model, example_inputs=(torch.randn(1, 5, 8),))
    heads = _heads(groups)
    assert len(heads) == 4
    table = {s.name: (s.dim, s.indices.tolist()) for s in heads[2].slices}["table"]
    assert table == (1, [2])
    pruned = _exact(model, groups, [heads[0].id, heads[2].id])
    assert pruned.table.shape == (9, 2)


def test_per_head_gate_bias_joins_its_head():
    model = HeadAttention(gate_bias=True).eval()
    groups = discover_groups(model, example_inputs=(torch.randn(1, 5, 8),))
    heads = _heads(groups)
    assert len(heads) == 4 and {s.name: s.indices.tolist() for s in heads[3].slices}["gate"] == [3]
    assert _exact(model, groups, [heads[3].id]).gate.shape == (3,)


def test_a_failing_rule_leaves_its_channels_unprunable(restore_rules):
    def broken(ctx):
        raise IndexError("rule bug")

    register_op_rule(torch.ops.aten.gelu.default, broken)

    class GeluMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 4)
            self.c, self.d = nn.Linear(4, 5), nn.Linear(5, 4)

        def forward(self, x):
            return self.d(torch.relu(self.c(self.b(nn.functional.gelu(self.a(x))))))

    groups = discover_groups(GeluMLP().eval(), example_inputs=(torch.randn(2, 4),))
    assert groups.counts() == {"neuron": 4 + 5}  # b -> c and c -> d; a -> gelu -> b is left out
    assert not any(s.name.startswith("a.") for g in groups for s in g.slices)
    reason = next(c for c in groups.unprunable if "propagation rule failed (IndexError: rule bug)" in c.reason)
    assert "a.weight" in reason.tensors
