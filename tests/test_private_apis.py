"""The private torch and transformers APIs oto_hf relies on, pinned (checked against torch 2.13, transformers 5.24).

Each test names where oto_hf uses the API and checks the shape or behaviour it relies on, so that an upgrade that
changes one fails here, by name, rather than somewhere deep in discovery, slicing, saving or training. When one fails,
fix the code at the place named and update the version in its comment.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import pytest
import torch
import torch.utils._pytree as pytree
import transformers
from torch import nn
from transformers import AutoConfig, BertConfig, Trainer, TrainingArguments, ViTConfig
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.pytorch_utils import Conv1D

from oto_hf.graph.export import export_model
from oto_hf.graph.rule_context import module_path
from oto_hf.models import AUTO_CLASSES, DEFAULT_MODEL_TYPES, model_classes_for, register_pruned_architecture
from tests.utils.tiny_models import TEXT

# ---- transformers: the Auto-class tables (oto_hf/models/__init__.py) ------------------------------------------------


@pytest.mark.parametrize(
    "auto_name, config",
    [
        ("AutoModel", BertConfig(**TEXT)),
        ("AutoModelForPreTraining", BertConfig(**TEXT)),
        ("AutoModelForCausalLM", transformers.LlamaConfig(**TEXT, num_key_value_heads=2)),
        ("AutoModelForMaskedLM", BertConfig(**TEXT)),
        ("AutoModelForSequenceClassification", BertConfig(**TEXT)),
        ("AutoModelForQuestionAnswering", BertConfig(**TEXT)),
        ("AutoModelForTokenClassification", BertConfig(**TEXT)),
        ("AutoModelForMultipleChoice", BertConfig(**TEXT)),
        ("AutoModelForImageClassification", ViTConfig(image_size=16, patch_size=4, **TEXT)),
    ],
    ids=lambda value: value if isinstance(value, str) else value.model_type,
)
def test_model_mapping_names_name_the_class_each_auto_class_builds(auto_name, config):
    """`modeling_auto.<X>_MAPPING_NAMES` (model type -> class name) is read by `model_classes_for`."""
    assert auto_name in AUTO_CLASSES
    mapping = getattr(modeling_auto, AUTO_CLASSES[auto_name])
    assert isinstance(mapping, Mapping) and isinstance(mapping[config.model_type], str)
    model = getattr(transformers, auto_name).from_config(config)
    assert type(model).__name__ == mapping[config.model_type] == model_classes_for(config.model_type)[auto_name]


def test_every_auto_class_table_exists_and_covers_the_default_architectures():
    for auto_name, mapping_name in AUTO_CLASSES.items():
        assert isinstance(getattr(modeling_auto, mapping_name, None), Mapping), mapping_name
    for model_type in DEFAULT_MODEL_TYPES:
        assert model_classes_for(model_type), model_type


def test_config_mapping_gives_the_stock_config_class():
    """`configuration_auto.CONFIG_MAPPING[model_type]` is the base of every `oto_<model_type>` config class."""
    assert CONFIG_MAPPING["bert"] is BertConfig
    for model_type in DEFAULT_MODEL_TYPES:
        assert model_type in CONFIG_MAPPING
        assert CONFIG_MAPPING[model_type] is type(AutoConfig.for_model(model_type))


def test_checkpoint_key_renames_are_shared_with_the_pruned_class():
    """`transformers.conversion_mapping` (`models/pruned.py::_share_key_renames`, which skips it if it is missing)."""
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )

    assert "overwrite" in inspect.signature(register_checkpoint_conversion_mapping).parameters
    stock = get_checkpoint_conversion_mapping("GPTNeoXForCausalLM")
    assert stock, "GPT-NeoX's output embedding is renamed on save and load (tests/test_saving.py relies on it)"
    register_pruned_architecture("gpt_neox")
    assert repr(get_checkpoint_conversion_mapping("OTOGPTNeoXForCausalLM")) == repr(stock)


# ---- transformers: Trainer's loss scaling (oto_hf/trainer.py) -------------------------------------------------------


class _SummedLoss(nn.Module):
    """A squared error summed over the batch, divided by `num_items_in_batch` when given; records its extra kwargs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.seen: list[list[str]] = []

    def forward(self, x, labels=None, **kwargs):
        self.seen.append(sorted(kwargs))
        loss = (self.linear(x).squeeze(-1) - labels).square().sum()
        if kwargs.get("num_items_in_batch") is not None:
            loss = loss / kwargs["num_items_in_batch"]
        return {"loss": loss}


class _NoKwargs(_SummedLoss):
    def forward(self, x, labels=None):
        return super().forward(x, labels)


def _trainer(model: nn.Module, tmp_path, **kwargs) -> Trainer:
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True, **kwargs)
    return Trainer(model=model, args=args)


_BATCH = {"x": torch.ones(4, 2), "labels": torch.zeros(4)}


def test_model_accepts_loss_kwargs_is_set_from_the_forward_signature(tmp_path):
    """`Trainer.model_accepts_loss_kwargs`: True for a `**kwargs` forward unless the model's `accepts_loss_kwargs`
    says otherwise. `OTOTrainer.__init__` reads it and overwrites it with False for heads that ignore the count."""
    assert _trainer(_SummedLoss(), tmp_path).model_accepts_loss_kwargs is True
    assert _trainer(_NoKwargs(), tmp_path).model_accepts_loss_kwargs is False
    opted_out = _SummedLoss()
    opted_out.accepts_loss_kwargs = False
    assert _trainer(opted_out, tmp_path).model_accepts_loss_kwargs is False


def test_compute_loss_passes_num_items_in_batch_only_when_the_model_accepts_loss_kwargs(tmp_path):
    model = _SummedLoss()
    trainer = _trainer(model, tmp_path)
    trainer.compute_loss(model, dict(_BATCH), num_items_in_batch=torch.tensor(4))
    assert model.seen[-1] == ["num_items_in_batch"]
    trainer.model_accepts_loss_kwargs = False  # what OTOTrainer does: read at every step, not only in __init__
    trainer.compute_loss(model, dict(_BATCH), num_items_in_batch=torch.tensor(4))
    assert model.seen[-1] == []


def test_training_step_divides_by_accumulation_steps_unless_the_loss_was_normalised(tmp_path):
    """`training_step` leaves the loss undivided by `current_gradient_accumulation_steps` when the model accepts loss
    kwargs and `num_items_in_batch` is given (the model divided by it); `OTOTrainer.compute_loss` scales its
    distillation term the same way. `loss_is_scaled_for_ga` (None by default) would override this."""
    model = _SummedLoss()
    trainer = _trainer(model, tmp_path)
    assert trainer.loss_is_scaled_for_ga is None
    trainer.current_gradient_accumulation_steps = 4
    full = float(model(**_BATCH)["loss"].detach())
    normalised = trainer.training_step(model, dict(_BATCH), num_items_in_batch=torch.tensor(1))
    assert float(normalised) == pytest.approx(full)
    trainer.model_accepts_loss_kwargs = False
    divided = trainer.training_step(model, dict(_BATCH), num_items_in_batch=torch.tensor(1))
    assert float(divided) == pytest.approx(full / 4)


def test_training_loop_sets_current_gradient_accumulation_steps(tmp_path):
    """Read by `OTOTrainer.compute_loss` while distilling: the number of batches in the current update step."""
    seen = []

    class Recording(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            seen.append(self.current_gradient_accumulation_steps)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    dataset = [{"x": torch.ones(2), "labels": torch.tensor(0.0)} for _ in range(4)]
    args = TrainingArguments(
        str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True, max_steps=1, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, save_strategy="no",
    )  # fmt: skip
    Recording(model=_SummedLoss(), args=args, train_dataset=dataset).train()
    assert seen == [2, 2]


def test_config_name_or_path_is_the_loaded_path(tmp_path):
    """`PretrainedConfig._name_or_path` names `OTOTrainer`'s default output folder (`name_or_path` is its public
    read-only alias)."""
    assert BertConfig(**TEXT)._name_or_path == ""
    BertConfig(**TEXT).save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config._name_or_path == config.name_or_path == str(tmp_path)


# ---- torch.export graphs (oto_hf/graph/) ----------------------------------------------------------------------------


class _NoGradBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.inner = nn.Sequential(nn.Linear(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.first(x)
        with torch.no_grad():
            z = y * 2
        return self.inner(y).view(2, 2, 2) + z.view(2, 2, 2)


@pytest.fixture(scope="module")
def exported():
    return export_model(_NoGradBlock(), (torch.randn(2, 4),))


def test_higher_order_ops_carry_one_subgraph_then_its_operands(exported):
    """`torch._ops.HigherOrderOperator` (`graph/propagate.py::_run`): a `no_grad` block becomes one node whose target
    is a HigherOrderOperator, with a single `get_attr` argument (its subgraph) followed by the subgraph's inputs."""
    nodes = [n for n in exported.graph.nodes if isinstance(n.target, torch._ops.HigherOrderOperator)]
    assert len(nodes) == 1
    node = nodes[0]
    submodules = [a for a in node.args if isinstance(a, torch.fx.Node) and a.op == "get_attr"]
    assert len(submodules) == 1
    subgraph = getattr(exported.graph_module, submodules[0].target)
    operands = node.args[node.args.index(submodules[0]) + 1 :]
    assert len([n for n in subgraph.graph.nodes if n.op == "placeholder"]) == len(operands)


def test_op_overloads_expose_their_schema(exported):
    """`OpOverload._schema` (`graph/rule_context.py`: arguments by name, op names in errors) and `aten._unsafe_view`,
    which `view`s of fresh tensors become (`graph/rules.py::movement`)."""
    linear = next(n for n in exported.graph.nodes if n.target is torch.ops.aten.linear.default)
    assert [a.name for a in linear.target._schema.arguments] == ["input", "weight", "bias"]
    assert str(torch.ops.aten.linear.default) == "aten.linear.default"
    assert not hasattr(torch.ops.aten.linear, "_schema")  # packets have none: `_op_name` falls back to __name__
    assert [a.name for a in torch.ops.aten._unsafe_view.default._schema.arguments] == ["self", "size"]


def test_nodes_record_their_module_path(exported):
    """`node.meta["nn_module_stack"]` (`graph/rule_context.py::module_path`): innermost module last, (path, type)."""
    linears = [n for n in exported.graph.nodes if n.target is torch.ops.aten.linear.default]
    assert [module_path(n) for n in linears] == ["first", "inner.0"]
    path, _ = list(linears[1].meta["nn_module_stack"].values())[-1]
    assert path.endswith("inner.0")


# ---- torch: pytrees (stats.py, costs.py, utils.py) ------------------------------------------------------------------


def test_pytree_maps_nested_containers_and_flattens_model_outputs():
    """`torch.utils._pytree.tree_map` / `tree_leaves`: nested dicts, lists and tuples, and transformers' `ModelOutput`
    (registered as a pytree node by transformers) flatten to their tensors in field order."""
    t = torch.ones(2)
    mapped = pytree.tree_map(lambda x: x * 2 if isinstance(x, torch.Tensor) else x, {"a": [t, (t, 1)], "b": "s"})
    assert torch.equal(mapped["a"][0], t * 2) and torch.equal(mapped["a"][1][0], t * 2)
    assert mapped["a"][1][1] == 1 and mapped["b"] == "s"
    loss, logits = torch.zeros(()), torch.ones(3)
    leaves = pytree.tree_leaves(SequenceClassifierOutput(loss=loss, logits=logits))
    assert len(leaves) == 2 and leaves[0] is loss and leaves[1] is logits


# ---- torch: fake tensors (costs.py) ---------------------------------------------------------------------------------


def test_fake_tensor_mode_runs_meta_weights_on_fake_inputs():
    """`torch._subclasses.fake_tensor.FakeTensorMode(allow_non_fake_inputs=True)` (`costs.py::group_flop_costs`):
    `from_tensor` makes a meta tensor fake, meta weights join the mode where they are used, and transformers counts
    fake tensors as traced (`is_tracing`), so it reads none of them back to the host."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from transformers.utils import is_tracing

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    x = mode.from_tensor(torch.ones(2, 3, device="meta"))
    assert isinstance(x, FakeTensor) and x.device.type == "meta" and is_tracing(x)
    with mode:
        y = nn.Linear(3, 4, device="meta")(x)
    assert isinstance(y, FakeTensor) and y.shape == (2, 4) and y.device.type == "meta"


# ---- torch: module internals (subnet.py, models/pruned.py) ----------------------------------------------------------


def test_parameter_and_buffer_dicts_are_what_the_module_exposes():
    """`nn.Module._parameters` / `_buffers`: the module's own tensors by attribute name (None for an absent bias);
    replacing an entry is what `module.weight`, `named_parameters` and `state_dict` then see."""
    linear = nn.Linear(3, 2, bias=False)
    assert set(linear._parameters) == {"weight", "bias"} and linear._parameters["bias"] is None
    smaller = nn.Parameter(torch.zeros(1, 3))
    linear._parameters["weight"] = smaller
    assert linear.weight is smaller and dict(linear.named_parameters())["weight"] is smaller
    norm = nn.BatchNorm1d(4)
    assert {"running_mean", "running_var", "num_batches_tracked"} <= set(norm._buffers)
    norm._buffers["running_mean"] = torch.zeros(2)
    assert norm.running_mean.shape == (2,) and norm.state_dict()["running_mean"].shape == (2,)


def test_conv_and_norm_base_classes():
    """`nn.modules.conv._ConvNd` and `nn.modules.batchnorm._NormBase` (`subnet.py::_layer_widths`): the common bases
    whose width attributes are set from the sliced weights."""
    for conv in (nn.Conv1d(4, 6, 3), nn.Conv2d(4, 6, 3, groups=2), nn.Conv3d(4, 6, 1), nn.ConvTranspose2d(4, 6, 3)):
        assert isinstance(conv, nn.modules.conv._ConvNd)
        in_per_group = conv.in_channels // conv.groups
        layout = (conv.in_channels, conv.out_channels // conv.groups) if conv.transposed else (6, in_per_group)
        assert tuple(conv.weight.shape[:2]) == layout
    for norm in (nn.BatchNorm1d(4), nn.BatchNorm2d(4), nn.SyncBatchNorm(4), nn.InstanceNorm2d(4, affine=True)):
        assert isinstance(norm, nn.modules.batchnorm._NormBase) and norm.num_features == 4
    assert not isinstance(nn.LayerNorm(4), nn.modules.batchnorm._NormBase)
    assert not isinstance(nn.GroupNorm(2, 4), nn.modules.batchnorm._NormBase)


def test_gpt2_conv1d_reads_its_width_from_nf():
    """`transformers.pytorch_utils.Conv1D` (`subnet.py::_layer_widths`, matched by class name): weight (nx, nf); the
    forward shapes its output with `self.nf`, so the attribute must follow a sliced weight."""
    conv = Conv1D(nf=5, nx=3)
    assert (conv.nf, conv.nx, tuple(conv.weight.shape)) == (5, 3, (3, 5))
    conv.weight = nn.Parameter(conv.weight[:, :4].detach().clone())
    conv.bias = nn.Parameter(conv.bias[:4].detach().clone())
    with pytest.raises(RuntimeError):
        conv(torch.randn(2, 3))
    conv.nf = 4
    assert conv(torch.randn(2, 3)).shape == (2, 4)


# ---- torch: foreach kernels (optim/base_steps.py) -------------------------------------------------------------------


def test_foreach_ops_match_the_per_tensor_ops():
    """The `torch._foreach_*` call forms DHSPG's base steps use give what the per-tensor ops give."""
    generator = torch.Generator().manual_seed(0)

    def tensors():
        return [torch.rand(3, generator=generator) + 0.5, torch.rand(2, 2, generator=generator) + 0.5]

    a, b, c = tensors(), tensors(), tensors()

    def check(result, expected):
        assert all(torch.allclose(x, y) for x, y in zip(result, expected, strict=True))

    check(torch._foreach_add(a, b, alpha=0.3), [x + 0.3 * y for x, y in zip(a, b)])
    check(torch._foreach_div(a, b), [x / y for x, y in zip(a, b)])
    check(torch._foreach_sqrt(a), [x.sqrt() for x in a])
    out = [x.clone() for x in a]
    torch._foreach_add_(out, b, alpha=-0.5)
    check(out, [x - 0.5 * y for x, y in zip(a, b)])
    out = [x.clone() for x in a]
    torch._foreach_add_(out, [0.1, 0.2])
    check(out, [a[0] + 0.1, a[1] + 0.2])
    out = [x.clone() for x in a]
    torch._foreach_add_(out, 0.1)
    check(out, [x + 0.1 for x in a])
    out = [x.clone() for x in a]
    torch._foreach_mul_(out, 0.9)
    check(out, [x * 0.9 for x in a])
    out = [x.clone() for x in a]
    torch._foreach_mul_(out, [0.5, 2.0])
    check(out, [a[0] * 0.5, a[1] * 2.0])
    out = [x.clone() for x in a]
    torch._foreach_div_(out, [2.0, 4.0])
    check(out, [a[0] / 2, a[1] / 4])
    out = [x.clone() for x in a]
    torch._foreach_addcdiv_(out, b, c, [-0.1, -0.2])
    check(out, [a[0] - 0.1 * b[0] / c[0], a[1] - 0.2 * b[1] / c[1]])
    out = [x.clone() for x in a]
    torch._foreach_addcmul_(out, b, c, 0.01)
    check(out, [x + 0.01 * y * z for x, y, z in zip(a, b, c)])
    out = [x.clone() for x in a]
    torch._foreach_lerp_(out, b, 0.1)
    check(out, [x + 0.1 * (y - x) for x, y in zip(a, b)])
