"""Tiny random models of every supported architecture, with odd widths (FFN 37) to expose slicing bugs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import transformers
from transformers import (
    BertConfig,
    ConvNextConfig,
    DistilBertConfig,
    GPT2Config,
    LlamaConfig,
    Qwen2Config,
    ResNetConfig,
    RobertaConfig,
    ViTConfig,
)


@dataclass(frozen=True)
class ArchCase:
    """One architecture: how to build it, the Auto class that loads it, and the groups its config implies."""

    name: str
    model_class: str
    config: Callable[[], object]
    auto_class: str
    expected: dict[str, int]  # groups per kind
    per_layer: dict[str, int]  # groups per kind in each numbered layer (heads, neurons)

    def build(self):
        return getattr(transformers, self.model_class)(self.config())


TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)

CASES = [
    ArchCase(
        "bert", "BertForQuestionAnswering", lambda: BertConfig(**TEXT), "AutoModelForQuestionAnswering",
        {"head": 2 * 4, "neuron": 2 * 37}, {"head": 4, "neuron": 37},
    ),
    ArchCase(
        # The classification head's dense layer (32 units between tanh and out_proj) is prunable too.
        "roberta", "RobertaForSequenceClassification", lambda: RobertaConfig(**TEXT, num_labels=3),
        "AutoModelForSequenceClassification", {"head": 2 * 4, "neuron": 2 * 37 + 32}, {"head": 4, "neuron": 37},
    ),
    ArchCase(
        "distilbert", "DistilBertModel",
        lambda: DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37), "AutoModel",
        {"head": 2 * 4, "neuron": 2 * 37}, {"head": 4, "neuron": 37},
    ),
    ArchCase(
        # GQA: one group per KV head (with its 2 query heads).
        "llama", "LlamaForCausalLM", lambda: LlamaConfig(**TEXT, num_key_value_heads=2), "AutoModelForCausalLM",
        {"head": 2 * 2, "neuron": 2 * 37}, {"head": 2, "neuron": 37},
    ),
    ArchCase(
        "qwen2", "Qwen2ForCausalLM", lambda: Qwen2Config(**TEXT, num_key_value_heads=2), "AutoModelForCausalLM",
        {"head": 2 * 2, "neuron": 2 * 37}, {"head": 2, "neuron": 37},
    ),
    ArchCase(
        "gpt2", "GPT2LMHeadModel",
        lambda: GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_inner=37, bos_token_id=0, eos_token_id=0),
        "AutoModelForCausalLM", {"head": 2 * 4, "neuron": 2 * 37}, {"head": 4, "neuron": 37},
    ),
    ArchCase(
        "vit", "ViTForImageClassification",
        lambda: ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=37, num_labels=3),
        "AutoModelForImageClassification", {"head": 2 * 4, "neuron": 2 * 37}, {"head": 4, "neuron": 37},
    ),
    ArchCase(
        # Bottleneck inner channels (2 + 2, then 4 + 4) plus the residual channels of each stage (8 + 16), tied
        # across the stage's adds and shortcuts.
        "resnet", "ResNetForImageClassification",
        lambda: ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck",
                             num_labels=3),
        "AutoModelForImageClassification", {"channel": 2 + 2 + 4 + 4 + 8 + 16}, {},
    ),
    ArchCase(
        # Residual channels are normalised by LayerNorm (unprunable); the inverted-bottleneck MLPs (4x) are not.
        "convnext", "ConvNextForImageClassification",
        lambda: ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3),
        "AutoModelForImageClassification", {"neuron": 4 * 8 + 4 * 16}, {},
    ),
]
CASE_IDS = [case.name for case in CASES]
