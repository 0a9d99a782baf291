"""DHSPG's `saliency="output"`: each group's importance from its reader's output energy and the loss gradient there."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from oto_hf import DHSPG, discover_groups, find_operators
from oto_hf.optim.output_importance import OutputImportance
from oto_hf.optim.readers import choose_saliency, unread_groups
from oto_hf.optim.sample_fisher import SampleFisher
from tests.utils.tiny_models import CASES, TEXT, user_inputs

DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout", "resid_pdrop",
            "embd_pdrop", "attn_pdrop", "hidden_dropout", "pooler_dropout", "classifier_dropout")  # fmt: skip
TEXT_CASES = [case for case in CASES if case.name not in ("vit", "swin", "resnet", "convnext", "mobilenet_v2")]


def llama() -> tuple[LlamaForCausalLM, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    config = LlamaConfig(**{**TEXT, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8})
    model = LlamaForCausalLM(config)
    ids = torch.randint(1, config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    return model, {"input_ids": ids}


def train_forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    model.train()
    model.zero_grad()
    model(**inputs, labels=inputs["input_ids"], use_cache=False).loss.backward()


@pytest.mark.parametrize("isotropic", [True, False], ids=["output", "kfac"])
def test_importance_matches_its_formula_by_brute_force(isotropic: bool):
    """Brute force on one head and one neuron of a LLaMA: `output` is E_t ||W_g a_t,g||^2 * E_t ||dL/dy_t||^2 / dim(y);
    `kfac` is E_{t,s} (dL/dy_s . W_g a_t,g)^2, the squared alignment over every pair of tokens."""
    model, inputs = llama()
    groups = discover_groups(model, inputs)
    source = OutputImportance(model, groups, isotropic=isotropic)
    source.active = True
    layer = model.model.layers[1]
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, args, output):
            seen[name] = args[0].detach()
            output.register_hook(lambda grad: seen.__setitem__(name + ".grad", grad.detach()))

        return hook

    handles = [
        layer.self_attn.o_proj.register_forward_hook(keep("o")),
        layer.mlp.down_proj.register_forward_hook(keep("down")),
    ]
    train_forward(model, inputs)
    for handle in handles:
        handle.remove()
    importance = source.importance()

    def expected(reader: nn.Linear, name: str, columns: torch.Tensor) -> float:
        a = seen[name].double().flatten(0, 1)[:, columns]
        delta = a @ reader.weight.detach().double()[:, columns].T
        grad = seen[name + ".grad"].double().flatten(0, 1)
        if not isotropic:
            return float((grad @ delta.T).square().mean())
        return float(delta.square().sum(-1).mean() * grad.square().sum(-1).mean() / reader.out_features)

    position = {g.id: i for i, g in enumerate(groups)}
    head = next(g for g in groups if g.kind == "head" and g.layer == 1)
    neuron = next(g for g in groups if g.kind == "neuron" and g.layer == 1)
    for group, reader, name in ((head, layer.self_attn.o_proj, "o"), (neuron, layer.mlp.down_proj, "down")):
        (columns,) = [i for n, d, i in group.slices if n.endswith(f"{name}_proj.weight") and d == 1]
        assert importance[position[group.id]].item() == pytest.approx(expected(reader, name, columns), rel=1e-9)
    assert bool((importance > 0).all())


def test_a_kv_group_is_as_important_as_its_query_heads():
    model, inputs = llama()
    groups = discover_groups(model, inputs)
    source = OutputImportance(model, groups)
    source.active = True
    train_forward(model, inputs)
    importance = source.importance()
    kv_groups = [g for g in groups if g.kind == "kv_head"]
    assert kv_groups
    position = {g.id: i for i, g in enumerate(groups)}
    for kv in kv_groups:
        heads = [position[g.id] for g in groups if g.kind == "head" and g.nest == kv.nest]
        assert len(heads) == 2
        assert importance[position[kv.id]].item() == pytest.approx(importance[heads].sum().item(), rel=1e-12)


def test_only_active_training_forwards_with_gradients_count():
    model, inputs = llama()
    groups = discover_groups(model, inputs)
    source = OutputImportance(model, groups)
    train_forward(model, inputs)  # inactive
    source.active = True
    model.eval()
    model(**inputs, use_cache=False)  # evaluation mode
    model.train()
    with torch.no_grad():
        model(**inputs, use_cache=False)  # no gradients
    assert bool((source.importance() == 0).all())
    train_forward(model, inputs)
    assert bool((source.importance() > 0).all())
    source.reset()
    assert bool((source.importance() == 0).all())
    source.remove()
    train_forward(model, inputs)
    assert bool((source.importance() == 0).all())


@pytest.mark.parametrize("source_class", [OutputImportance, SampleFisher], ids=["output", "sample_fisher"])
@pytest.mark.parametrize("case", TEXT_CASES, ids=lambda case: case.name)
def test_every_text_architecture_scores_every_group(case, source_class):
    """Linear readers (BERT, LLaMA, ...) and GPT-2's Conv1D alike, for both hooked saliencies."""
    config = case.config()
    for name in DROPOUTS:
        if hasattr(config, name):
            setattr(config, name, 0.0)  # a dropped activation would make a tiny model's group score 0
    model = getattr(transformers, case.model_class)(config)
    inputs = user_inputs(model)
    groups = discover_groups(model, inputs)
    source = source_class(model, groups)
    source.active = True
    model.train()
    model(**inputs)[0].float().square().mean().backward()  # any loss of the first output
    importance = source.importance()
    assert importance.shape == (len(groups),)
    assert bool(torch.isfinite(importance).all()) and bool((importance > 0).all())


def test_groups_without_a_linear_reader_are_refused():
    model = next(case for case in CASES if case.name == "resnet").build()
    groups = discover_groups(model, user_inputs(model))
    with pytest.raises(
        ValueError, match=r"`saliency='output'` scores a group through the nn.Linear .* Use `saliency='fisher'`"
    ):
        OutputImportance(model, groups)


def test_auto_chooses_output_where_a_linear_layer_reads_every_group_and_fisher_elsewhere():
    model, inputs = llama()
    groups = discover_groups(model, inputs)
    assert choose_saliency("auto", model, groups) == "output"
    assert choose_saliency("auto", model, groups, erase=True) == "fisher"  # operators: by Fisher importance
    assert choose_saliency("otov2", model, groups) == "otov2"  # a chosen saliency is kept
    kwargs = dict(lr=1e-3, target_sparsity=0.3, pruning_end_steps=4)
    optimizer = DHSPG.from_model(model, groups, saliency="auto", **kwargs)
    assert optimizer.saliency == "output" and isinstance(optimizer._source, OutputImportance)
    assert optimizer._source.isotropic
    assert not DHSPG.from_model(model, groups, saliency="kfac", **kwargs)._source.isotropic
    with pytest.raises(ValueError, match=r"`saliency='auto'` chooses from the model: build the optimizer with"):
        DHSPG(model.parameters(), groups, model.named_parameters(), saliency="auto", **kwargs)

    resnet = next(case for case in CASES if case.name == "resnet").build()
    conv_groups = discover_groups(resnet, user_inputs(resnet))
    assert unread_groups(resnet, conv_groups) and choose_saliency("auto", resnet, conv_groups) == "fisher"
    assert DHSPG.from_model(resnet, conv_groups, saliency="auto", **kwargs).saliency == "fisher"


def test_the_source_goes_with_the_output_saliency_only():
    model, inputs = llama()
    groups = discover_groups(model, inputs)
    kwargs = dict(lr=1e-3, target_sparsity=0.3, pruning_end_steps=4)
    with pytest.raises(
        ValueError, match=r"`importance_source` .* goes with `saliency='kfac'`, 'output' or 'sample_fisher' only"
    ):
        DHSPG.from_model(model, groups, importance_source=OutputImportance(model, groups), **kwargs)
    with pytest.raises(ValueError, match=r"and they need one"):
        DHSPG(model.parameters(), groups, model.named_parameters(), saliency="output", **kwargs)
    with pytest.raises(ValueError, match=r"Erasing operators .* does not work with `saliency='output'`"):
        DHSPG.from_model(model, groups, saliency="output", operators=find_operators(model, groups), **kwargs)


def run(model: nn.Module, groups, inputs, steps: int, optimizer: DHSPG | None = None, start: int = 0) -> DHSPG:
    optimizer = optimizer or DHSPG.from_model(
        model, groups, lr=1e-2, saliency="output", target_sparsity=0.4, partition_steps=3, pruning_end_steps=9,
        num_partition_periods=3,
    )  # fmt: skip
    for _ in range(start, steps):
        train_forward(model, inputs)
        optimizer.step()
    return optimizer


def test_dhspg_meets_its_target_by_its_own_steps_and_resumes_bit_identically(tmp_path):
    model, inputs = llama()
    groups = discover_groups(model, inputs)
    reference = run(model, groups, inputs, 12)
    assert reference.num_forced_zero_groups == 0
    assert reference.num_zero_groups() >= reference.target_num_zero_groups > 0
    assert set(reference.zero_group_ids()) == set(groups.zero_group_ids(model))

    resumed_model, _ = llama()
    optimizer = run(resumed_model, groups, inputs, 5)  # stops inside the scoring window of the second partition
    assert optimizer.state_dict()["dhspg"]["output_importance"]
    torch.save(resumed_model.state_dict(), tmp_path / "model.pt")
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    fresh, _ = llama()
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    fresh_optimizer = DHSPG.from_model(
        fresh, groups, lr=1e-2, saliency="output", target_sparsity=0.4, partition_steps=3, pruning_end_steps=9,
        num_partition_periods=3,
    )  # fmt: skip
    fresh_optimizer.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    run(fresh, groups, inputs, 12, fresh_optimizer, start=5)
    assert fresh_optimizer.zero_group_ids() == reference.zero_group_ids()
    for (name, p), q in zip(fresh.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name
