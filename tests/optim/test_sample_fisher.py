"""DHSPG's `saliency="sample_fisher"`: the squared loss gradient of a mask on each group, one sequence at a time."""

from __future__ import annotations

import pytest
import torch

from oto_hf import DHSPG, discover_groups
from oto_hf.optim.sample_fisher import SampleFisher
from tests.optim.test_output_importance import llama, train_forward
from tests.utils.tiny_models import CASES, user_inputs


def test_importance_is_the_mean_square_of_each_sequences_mask_gradient():
    """Brute force on one head and one neuron of a LLaMA: a mask per sequence on the group's columns at its reader,
    differentiated by autograd."""
    model, inputs = llama()
    groups = discover_groups(model, inputs)
    source = SampleFisher(model, groups)
    source.active = True
    layer = model.model.layers[1]
    position = {g.id: i for i, g in enumerate(groups)}
    head = next(g for g in groups if g.kind == "head" and g.layer == 1)
    neuron = next(g for g in groups if g.kind == "neuron" and g.layer == 1)
    batch = inputs["input_ids"].shape[0]
    masks, handles = {}, []
    for group, reader, name in ((head, layer.self_attn.o_proj, "o"), (neuron, layer.mlp.down_proj, "down")):
        (columns,) = [i for n, d, i in group.slices if n.endswith(f"{name}_proj.weight") and d == 1]
        mask = torch.ones(batch, 1, 1, requires_grad=True)
        masks[group.id] = mask

        def pre_hook(module, args, mask=mask, columns=torch.as_tensor(columns)):
            factor = torch.ones(batch, 1, module.in_features)
            factor[:, :, columns] = mask.expand(batch, 1, len(columns))
            return (args[0] * factor,)

        handles.append(reader.register_forward_pre_hook(pre_hook))
    train_forward(model, inputs)
    for handle in handles:
        handle.remove()
    importance = source.importance()
    for group in (head, neuron):
        per_sequence = masks[group.id].grad.double().flatten()
        expected = float(per_sequence.square().mean())
        assert importance[position[group.id]].item() == pytest.approx(expected, rel=1e-6)
    assert bool((importance > 0).all())


def test_a_kv_group_scores_as_its_query_heads_and_inactive_or_removed_hooks_record_nothing():
    model, inputs = llama()
    groups = discover_groups(model, inputs)
    source = SampleFisher(model, groups)
    train_forward(model, inputs)  # inactive
    assert bool((source.importance() == 0).all())
    source.active = True
    with torch.no_grad():
        model(**inputs, use_cache=False)  # no gradients
    train_forward(model, inputs)
    importance = source.importance()
    assert source.samples == inputs["input_ids"].shape[0]  # one forward's sequences, counted once
    position = {g.id: i for i, g in enumerate(groups)}
    for kv in (g for g in groups if g.kind == "kv_head"):
        heads = [position[g.id] for g in groups if g.kind == "head" and g.nest == kv.nest]
        assert importance[position[kv.id]].item() == pytest.approx(importance[heads].sum().item(), rel=1e-12)
    source.reset()
    source.remove()
    train_forward(model, inputs)
    assert bool((source.importance() == 0).all())


def test_conv_channels_are_refused():
    model = next(case for case in CASES if case.name == "resnet").build()
    groups = discover_groups(model, user_inputs(model))
    with pytest.raises(ValueError, match=r"`saliency='sample_fisher'` scores a group through the nn.Linear"):
        SampleFisher(model, groups)


def test_dhspg_meets_its_target_by_its_own_steps_and_resumes_bit_identically(tmp_path):
    settings = dict(lr=1e-2, saliency="sample_fisher", target_sparsity=0.4, partition_steps=3, pruning_end_steps=9,
                    num_partition_periods=3)  # fmt: skip

    def run(model, optimizer, start: int, steps: int) -> DHSPG:
        for _ in range(start, steps):
            train_forward(model, inputs)
            optimizer.step()
        return optimizer

    model, inputs = llama()
    groups = discover_groups(model, inputs)
    reference = run(model, DHSPG.from_model(model, groups, **settings), 0, 12)
    assert reference.num_forced_zero_groups == 0
    assert reference.num_zero_groups() >= reference.target_num_zero_groups > 0
    assert set(reference.zero_group_ids()) == set(groups.zero_group_ids(model))

    cut, _ = llama()
    optimizer = run(cut, DHSPG.from_model(cut, groups, **settings), 0, 5)
    torch.save(cut.state_dict(), tmp_path / "model.pt")
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    fresh, _ = llama()
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    fresh_optimizer = DHSPG.from_model(fresh, groups, **settings)
    fresh_optimizer.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    run(fresh, fresh_optimizer, 5, 12)
    assert fresh_optimizer.zero_group_ids() == reference.zero_group_ids()
    for (name, p), q in zip(fresh.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name
