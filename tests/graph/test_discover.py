"""Group discovery: the exact groups of a few architectures, plain modules, filters and errors (the counts and
validity of every architecture's groups are checked in test_architectures.py)."""

import ast
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

import oto_hf
from oto_hf import construct_subnet, default_example_inputs, discover_groups
from oto_hf.graph import discover
from oto_hf.graph.export import TracingError
from tests.utils.tiny_models import CASES_BY_NAME, TEXT


@pytest.fixture(scope="module")
def discovered():
    """`discovered(name)`: the case's eval-mode model and its groups, discovered once per module on first use."""
    found = {}

    def get(name):
        if name not in found:
            torch.manual_seed(0)
            model = CASES_BY_NAME[name].build().eval()
            found[name] = (model, discover_groups(model))
        return found[name]

    return get


def test_bert_head_group_holds_qkv_rows_and_output_columns(discovered):
    _, groups = discovered("bert")
    head = groups[1]
    assert head.kind == "head" and head.layer == 0 and head.module == "bert.encoder.layer.0"
    prefix = "bert.encoder.layer.0.attention"
    expected = {f"{prefix}.self.{p}.{w}": 0 for p in ("query", "key", "value") for w in ("weight", "bias")} | {
        f"{prefix}.output.dense.weight": 1
    }
    assert {s.name: s.dim for s in head.slices} == expected
    for s in head.slices:
        assert s.indices.tolist() == list(range(8, 16))
    assert head.num_params == 3 * (8 * 32 + 8) + 32 * 8


def test_bert_neuron_group(discovered):
    _, groups = discovered("bert")
    neuron = [g for g in groups if g.kind == "neuron" and g.layer == 1][5]
    assert {(s.name, s.dim, tuple(s.indices.tolist())) for s in neuron.slices} == {
        ("bert.encoder.layer.1.intermediate.dense.weight", 0, (5,)),
        ("bert.encoder.layer.1.intermediate.dense.bias", 0, (5,)),
        ("bert.encoder.layer.1.output.dense.weight", 1, (5,)),
    }


def test_llama_gqa_query_heads_are_nested_in_their_kv_group(discovered):
    """Each query head is a group (its query rows and output columns); the key and value rows of a KV head are the KV
    group its two query heads are nested in (they share `nest`)."""
    _, groups = discovered("llama")
    heads = [g for g in groups if g.kind == "head" and g.layer == 1]
    kv = [g for g in groups if g.kind == "kv_head" and g.layer == 1]
    assert len(heads) == 4 and len(kv) == 2
    third = {s.name.split(".")[-2]: s for s in heads[2].slices}
    assert set(third) == {"q_proj", "o_proj"}  # no biases in LLaMA
    assert third["q_proj"].indices.tolist() == list(range(16, 24))  # query head 2 (head_dim 8)
    assert third["o_proj"].dim == 1 and third["o_proj"].indices.tolist() == list(range(16, 24))
    second_kv = {s.name.split(".")[-2]: s for s in kv[1].slices}
    assert set(second_kv) == {"k_proj", "v_proj"}
    assert second_kv["k_proj"].indices.tolist() == second_kv["v_proj"].indices.tolist() == list(range(8, 16))
    assert [h.nest for h in heads] == [kv[0].nest, kv[0].nest, kv[1].nest, kv[1].nest]
    assert [groups.parent_of(h.id) for h in heads] == [kv[0].id, kv[0].id, kv[1].id, kv[1].id]
    assert (
        groups.parent_of(kv[0].id) is None
        and "4 heads, 2 kv_heads" in groups.select(where=lambda g: g.layer == 1).summary().splitlines()[0]
    )


def test_gpt2_fused_qkv_columns(discovered):
    _, groups = discovered("gpt2")
    head = groups[0]
    c_attn = next(s for s in head.slices if s.name.endswith("c_attn.weight"))
    assert c_attn.dim == 1  # Conv1D stores weights as (in, out)
    assert c_attn.indices.tolist() == list(range(0, 8)) + list(range(32, 40)) + list(range(64, 72))


def test_resnet_residual_channels_are_tied_across_the_stage(discovered):
    _, groups = discovered("resnet")
    assert groups.counts_per_layer() == {0: {"channel": 4}, 1: {"channel": 8}, None: {"channel": 24}}
    tied = [g for g in groups if any("shortcut" in s.name for s in g.slices)]
    assert len(tied) == 8 + 16  # both stages start with a projection shortcut
    names = {s.name for s in tied[-1].slices} | {s.name for s in tied[-1].buffer_slices}  # last stage
    assert any(n.endswith("layer.2.convolution.weight") for n in names)
    assert any(n.endswith("shortcut.normalization.running_mean") for n in names)
    assert "classifier.1.weight" in names  # the classifier reads the pooled channel


def test_residual_stream_reported_with_reason(discovered):
    _, groups = discovered("bert")
    reasons = " | ".join(c.reason for c in groups.unprunable)
    assert "normalisation over a channel dimension" in reasons and "embeddings.LayerNorm" in reasons
    assert "bert.embeddings.word_embeddings.weight" in groups.unprunable[0].tensors
    summary = groups.summary()
    assert "8 heads, 74 neurons" in summary and "Unprunable components" in summary


def test_kinds_filter(discovered):
    model, _ = discovered("bert")
    heads = discover_groups(model, prune_kinds=["head"])
    assert heads.counts() == {"head": 8}
    with pytest.raises(ValueError, match="Unknown group kinds"):
        discover_groups(model, prune_kinds=["filter"])


def test_default_example_inputs():
    text = default_example_inputs(LlamaForCausalLM(LlamaConfig(**TEXT, num_key_value_heads=2)))
    assert set(text) == {"input_ids"} and text["input_ids"].shape == (1, 8)
    vision = default_example_inputs(CASES_BY_NAME["vit"].build())
    assert vision["pixel_values"].shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="Pass `example_inputs`"):
        default_example_inputs(nn.Linear(2, 2))


def test_plain_modules_with_example_inputs():
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(6, 11), nn.Linear(11, 3)

        def forward(self, x):
            return self.down(torch.relu(self.up(x)))

    groups = discover_groups(MLP(), example_inputs=(torch.randn(2, 6),))
    assert groups.counts() == {"neuron": 11}


def test_meta_device_model_is_traced_without_weights():
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    groups = discover_groups(model)
    assert groups.counts() == {"head": 4 * 8, "kv_head": 4 * 4, "neuron": 4 * 1376}
    assert all(p.is_meta for p in model.parameters())


def test_nothing_prunable_is_a_clear_error():
    with pytest.raises(ValueError, match="nothing prunable"):
        discover_groups(nn.Sequential(nn.Linear(4, 4)), example_inputs=(torch.randn(1, 4),))


def test_untraceable_inputs_are_a_clear_error():
    model = BertModel(BertConfig(**TEXT))
    with pytest.raises(RuntimeError, match="torch.export could not trace BertModel"):
        discover_groups(model, example_inputs={"not_an_argument": torch.ones(1, 3)})


class _Cached(nn.Module):
    """Returns a non-tensor (as transformers' `DynamicCache`) unless `use_cache=False`."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(4, 5), nn.Linear(5, 4)

    def forward(self, x, use_cache=True):
        y = self.down(torch.relu(self.up(x)))
        return (y, object()) if use_cache else y


def test_tracing_turns_the_cache_off_unless_the_inputs_set_it():
    x = torch.randn(2, 4)
    assert discover_groups(_Cached(), {"x": x}).counts() == {"neuron": 5}
    assert discover_groups(_Cached(), (x,)).counts() == {"neuron": 5}
    for inputs in ({"x": x, "use_cache": True}, (x, True)):
        with pytest.raises(TracingError, match="object"):
            discover_groups(_Cached(), inputs)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        if self.proj(x).sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            return x
        return -x


def test_tracing_failure_names_the_module_and_what_to_do():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), _DataDependent()))
    with pytest.raises(RuntimeError, match=r"(?s)inside module '1\.1' \(_DataDependent\).*register_op_rule") as info:
        discover_groups(model, example_inputs=(torch.randn(2, 4),))
    assert isinstance(info.value, TracingError)


class _WidthFromInput(nn.Module):
    """Splits a fused projection at a point computed from the input's width, which pruning does not change."""

    def __init__(self):
        super().__init__()
        self.fused = nn.Linear(6, 12)
        self.down = nn.Linear(6, 6)
        self.mlp_up, self.mlp_down = nn.Linear(6, 5), nn.Linear(5, 6)

    def forward(self, x):
        a, b = self.fused(x).split([x.shape[-1], x.shape[-1]], dim=-1)
        y = x + self.down(a * torch.sigmoid(b))
        return y + self.mlp_down(torch.relu(self.mlp_up(y)))


def test_groups_whose_removal_breaks_the_forward_are_left_out_with_the_error():
    model = _WidthFromInput().eval()
    inputs = (torch.randn(2, 6),)
    unprobed = discover_groups(model, example_inputs=inputs, probe=False)
    assert unprobed.counts() == {"neuron": 6 + 5}
    groups = discover_groups(model, example_inputs=inputs)
    assert groups.counts() == {"neuron": 5}  # only the MLP can really be sliced
    reason = next(c.reason for c in groups.unprunable if "breaks the model's forward" in c.reason)
    assert "split_with_sizes" in reason and "fused.weight" in next(
        c.tensors for c in groups.unprunable if c.reason == reason
    )
    construct_subnet(model, groups, [0, 3])


def test_the_graph_layer_takes_the_probe_from_the_caller():
    """`oto_hf.graph.discover.discover_groups` moves what its `probe` reports to `unprunable`, and probes nothing
    without one."""
    model = _WidthFromInput().eval()
    inputs = (torch.randn(2, 6),)
    assert discover.discover_groups(model, inputs).counts() == {"neuron": 6 + 5}
    seen = []

    def probe(module, groups):
        seen.append(module)
        return {key: "ValueError: made up" for key, members in groups.families().items() if len(members) == 5}

    groups = discover.discover_groups(model, inputs, probe=probe)
    assert seen == [model] and groups.counts() == {"neuron": 6}
    assert "(ValueError: made up)" in groups.unprunable[-1].reason


def test_the_graph_layer_imports_nothing_above_it():
    """Layers point down: of the package, `oto_hf/graph/` imports only `oto_hf.utils` (the probe, which slices with
    `construct_subnet`, is passed in by `oto_hf.discover_groups`)."""
    for path in sorted((Path(oto_hf.__file__).parent / "graph").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert node.module == "utils", f"{path.name} imports ..{node.module}"
            if isinstance(node, ast.ImportFrom) and node.level == 0 or isinstance(node, ast.Import):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(name.split(".")[0] == "oto_hf" for name in names), f"{path.name} imports {names}"
