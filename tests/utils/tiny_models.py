"""Tiny random models of every supported architecture, with odd widths (FFN 37) to expose slicing bugs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import transformers
from transformers import (
    BertConfig,
    ConvNextConfig,
    DistilBertConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    Qwen2Config,
    ResNetConfig,
    RobertaConfig,
    ViTConfig,
)

from oto_hf import default_example_inputs


@dataclass(frozen=True)
class ArchCase:
    """One architecture: how to build it, the Auto class that loads it, and the groups its config implies."""

    name: str
    model_class: str
    config: Callable[[], transformers.PretrainedConfig]
    auto_class: str
    expected: dict[str, int]  # groups per kind
    per_layer: dict[str, int]  # groups per kind in each numbered layer (heads, neurons)

    def build(self) -> transformers.PreTrainedModel:
        return getattr(transformers, self.model_class)(self.config())


TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)

CASES = [
    ArchCase(
        name="bert",
        model_class="BertForQuestionAnswering",
        config=lambda: BertConfig(**TEXT),
        auto_class="AutoModelForQuestionAnswering",
        expected={"head": 2 * 4, "neuron": 2 * 37},
        per_layer={"head": 4, "neuron": 37},
    ),
    ArchCase(
        # The classification head's dense layer (32 units between tanh and out_proj) is prunable too.
        name="roberta",
        model_class="RobertaForSequenceClassification",
        config=lambda: RobertaConfig(**TEXT, num_labels=3),
        auto_class="AutoModelForSequenceClassification",
        expected={"head": 2 * 4, "neuron": 2 * 37 + 32},
        per_layer={"head": 4, "neuron": 37},
    ),
    ArchCase(
        name="distilbert",
        model_class="DistilBertModel",
        config=lambda: DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37),
        auto_class="AutoModel",
        expected={"head": 2 * 4, "neuron": 2 * 37},
        per_layer={"head": 4, "neuron": 37},
    ),
    ArchCase(
        # GQA: one group per KV head (with its 2 query heads).
        name="llama",
        model_class="LlamaForCausalLM",
        config=lambda: LlamaConfig(**TEXT, num_key_value_heads=2),
        auto_class="AutoModelForCausalLM",
        expected={"head": 2 * 2, "neuron": 2 * 37},
        per_layer={"head": 2, "neuron": 37},
    ),
    ArchCase(
        name="qwen2",
        model_class="Qwen2ForCausalLM",
        config=lambda: Qwen2Config(**TEXT, num_key_value_heads=2),
        auto_class="AutoModelForCausalLM",
        expected={"head": 2 * 2, "neuron": 2 * 37},
        per_layer={"head": 2, "neuron": 37},
    ),
    ArchCase(
        name="gpt2",
        model_class="GPT2LMHeadModel",
        config=lambda: GPT2Config(
            vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_inner=37, bos_token_id=0, eos_token_id=0
        ),
        auto_class="AutoModelForCausalLM",
        expected={"head": 2 * 4, "neuron": 2 * 37},
        per_layer={"head": 4, "neuron": 37},
    ),
    ArchCase(
        # One fused query_key_value projection, heads interleaved in it; rotary on a quarter of each head.
        name="gpt_neox",
        model_class="GPTNeoXForCausalLM",
        config=lambda: GPTNeoXConfig(**TEXT),
        auto_class="AutoModelForCausalLM",
        expected={"head": 2 * 4, "neuron": 2 * 37},
        per_layer={"head": 4, "neuron": 37},
    ),
    ArchCase(
        name="vit",
        model_class="ViTForImageClassification",
        config=lambda: ViTConfig(
            image_size=16,
            patch_size=4,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            num_labels=3,
        ),
        auto_class="AutoModelForImageClassification",
        expected={"head": 2 * 4, "neuron": 2 * 37},
        per_layer={"head": 4, "neuron": 37},
    ),
    ArchCase(
        # Bottleneck inner channels (2 + 2, then 4 + 4) plus the residual channels of each stage (8 + 16), tied
        # across the stage's adds and shortcuts.
        name="resnet",
        model_class="ResNetForImageClassification",
        config=lambda: ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck", num_labels=3
        ),
        auto_class="AutoModelForImageClassification",
        expected={"channel": 2 + 2 + 4 + 4 + 8 + 16},
        per_layer={},
    ),
    ArchCase(
        # Residual channels are normalised by LayerNorm (unprunable); the inverted-bottleneck MLPs (4x) are not.
        name="convnext",
        model_class="ConvNextForImageClassification",
        config=lambda: ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3),
        auto_class="AutoModelForImageClassification",
        expected={"neuron": 4 * 8 + 4 * 16},
        per_layer={},
    ),
]
CASE_IDS = [case.name for case in CASES]
CASES_BY_NAME = {case.name: case for case in CASES}


def user_inputs(model: transformers.PreTrainedModel) -> dict[str, Any]:
    """What a user passes: a tokenizer's padded batch of two (ids and attention mask), or an image processor's
    `pixel_values` for two images; never the `use_cache=False` that tracing needs."""
    generator = torch.Generator().manual_seed(0)
    if model.main_input_name == "pixel_values":
        pixels = default_example_inputs(model)["pixel_values"]
        return {"pixel_values": torch.randn(2, *pixels.shape[1:], generator=generator)}
    input_ids = torch.randint(1, model.config.vocab_size, (2, 8), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -3:] = 0  # the shorter sentence, padded
    return {"input_ids": input_ids, "attention_mask": attention_mask}
