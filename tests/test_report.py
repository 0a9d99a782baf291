"""Compression reports and the dense reference of a reloaded pruned model."""

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from oto_hf import OTOTrainer, construct_subnet, discover_groups, save_pruned
from oto_hf.report import compression_report, dense_reference
from tests.utils.data import TinyClassification
from tests.utils.tiny_models import TEXT
from tests.utils.train_tiny import tiny_args, tiny_model


def test_dense_reference_of_a_stock_config_has_the_original_widths(tmp_path):
    model = LlamaForCausalLM(LlamaConfig(**TEXT, num_key_value_heads=2)).eval()
    groups = discover_groups(model)
    first_of_each = {}
    for group in groups:
        first_of_each.setdefault((group.layer, group.kind), group.id)
    pruned = construct_subnet(model, groups, list(first_of_each.values()))  # uniform: a stock LLaMA config
    reloaded = AutoModelForCausalLM.from_pretrained(save_pruned(pruned, tmp_path / "out"))
    assert reloaded.config.intermediate_size == 36
    dense = dense_reference(reloaded)
    assert type(dense) is LlamaForCausalLM
    assert dense.config.intermediate_size == 37 and dense.config.num_key_value_heads == 2
    assert sum(p.numel() for p in dense.parameters()) == sum(p.numel() for p in model.parameters())

    report = compression_report(dense, reloaded, groups.example_inputs, latency_repeats=5)
    assert report["params_pruned"] < report["params_dense"] and report["flops_ratio"] < 1
    assert report["latency_ratio"] > 0
    # The first KV group of each layer takes its two query heads along (the first query head is one of them).
    assert report["removed_groups"] == {"head": 4, "kv_head": 2, "neuron": 2, "channel": 0}
    assert len(report["kept_per_layer"]) == 6  # query heads, KV groups and neurons of two layers


def test_flops_are_counted_when_batches_carry_an_attention_mask(tmp_path):
    class WithMask(TinyClassification):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            return {**item, "attention_mask": torch.ones_like(item["input_ids"])}

    trainer = OTOTrainer(tiny_model(), tiny_args(str(tmp_path)), train_dataset=WithMask())
    assert "attention_mask" in trainer.example_inputs
    assert trainer.dense_flops > 0 and sum(trainer.group_flops) > 0
