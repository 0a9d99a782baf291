"""Tiny random models of every supported architecture, with odd widths (FFN 37) to expose slicing bugs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import transformers
from transformers import (
    AlbertConfig,
    BertConfig,
    ConvNextConfig,
    DebertaV2Config,
    DistilBertConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    MobileNetV2Config,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
    ResNetConfig,
    RobertaConfig,
    SwinConfig,
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
        # Disentangled attention as in DeBERTa-v3: content-to-position and position-to-content scores from relative
        # embeddings (log buckets) projected by each layer's own query/key weights, added to the scores in eager
        # matmuls. The pooler's dense layer (32 units between its activation and the classifier) is prunable too.
        name="deberta-v2",
        model_class="DebertaV2ForSequenceClassification",
        config=lambda: DebertaV2Config(
            **TEXT,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=16,
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
            num_labels=3,
        ),
        auto_class="AutoModelForSequenceClassification",
        expected={"head": 2 * 4, "neuron": 2 * 37 + 32},
        per_layer={"head": 4, "neuron": 37},
    ),
    ArchCase(
        # One layer shared by every position (num_hidden_groups=1, run twice): its 4 heads and 37 neurons exist once.
        # The embeddings (16) are projected to the hidden size; the pooler's 32 units are prunable, as RoBERTa's head.
        name="albert",
        model_class="AlbertForSequenceClassification",
        config=lambda: AlbertConfig(**TEXT, embedding_size=16, num_labels=3),
        auto_class="AutoModelForSequenceClassification",
        expected={"head": 4, "neuron": 37 + 32},
        per_layer={"head": 4, "neuron": 37},
    ),
    ArchCase(
        # GQA: each of the 4 query heads is a group, nested in the KV group (its key and value heads) it shares with
        # one other query head.
        name="llama",
        model_class="LlamaForCausalLM",
        config=lambda: LlamaConfig(**TEXT, num_key_value_heads=2),
        auto_class="AutoModelForCausalLM",
        expected={"head": 2 * 4, "kv_head": 2 * 2, "neuron": 2 * 37},
        per_layer={"head": 4, "kv_head": 2, "neuron": 37},
    ),
    ArchCase(
        # GQA with biases on the query, key and value projections.
        name="qwen2",
        model_class="Qwen2ForCausalLM",
        config=lambda: Qwen2Config(**TEXT, num_key_value_heads=2),
        auto_class="AutoModelForCausalLM",
        expected={"head": 2 * 4, "kv_head": 2 * 2, "neuron": 2 * 37},
        per_layer={"head": 4, "kv_head": 2, "neuron": 37},
    ),
    ArchCase(
        # Per-head RMSNorm on queries and keys (QK-norm): its weight is shared by every head, so it stays unprunable.
        name="qwen3",
        model_class="Qwen3ForCausalLM",
        config=lambda: Qwen3Config(**TEXT, num_key_value_heads=2, head_dim=8),
        auto_class="AutoModelForCausalLM",
        expected={"head": 2 * 4, "kv_head": 2 * 2, "neuron": 2 * 37},
        per_layer={"head": 4, "kv_head": 2, "neuron": 37},
    ),
    ArchCase(
        # Multi-query attention: one KV head per layer, which is the whole attention (unprunable); its 4 query heads
        # are groups of their own.
        name="mistral_mqa",
        model_class="MistralForCausalLM",
        config=lambda: MistralConfig(**TEXT, num_key_value_heads=1),
        auto_class="AutoModelForCausalLM",
        expected={"head": 2 * 4, "neuron": 2 * 37},
        per_layer={"head": 4, "neuron": 37},
    ),
    ArchCase(
        # Fused projections: one qkv_proj (GQA: 4 query, 2 key and 2 value heads in it) and one gate_up_proj (neuron
        # j is rows j and 37 + j).
        name="phi3",
        model_class="Phi3ForCausalLM",
        config=lambda: Phi3Config(**TEXT, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        auto_class="AutoModelForCausalLM",
        expected={"head": 2 * 4, "kv_head": 2 * 2, "neuron": 2 * 37},
        per_layer={"head": 4, "kv_head": 2, "neuron": 37},
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
        # One fused query_key_value projection, heads interleaved in it; rotary on a quarter of each head; transformers
        # renames its checkpoint keys on save and load.
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
        # Windowed attention with a relative-position bias table (one column per head), shifted windows with their mask
        # in the second block, patch merging between stages (8x8 then 4x4 patches of widths 8 and 16). Stage 0 has
        # 2 blocks of 2 heads and int(4.625 * 8) = 37 neurons (layers 0 and 1), stage 1 one block of 4 heads and 74.
        name="swin",
        model_class="SwinForImageClassification",
        config=lambda: SwinConfig(
            image_size=16,
            patch_size=2,
            embed_dim=8,
            depths=[2, 1],
            num_heads=[2, 4],
            window_size=4,
            mlp_ratio=37 / 8,
            num_labels=3,
        ),
        auto_class="AutoModelForImageClassification",
        expected={"head": 2 * 2 + 4, "neuron": 2 * 37 + 74},
        per_layer={"head": 2, "neuron": 37},
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
    ArchCase(
        # Depthwise convolutions: each block's expanded channels (6x its input) go through a 1x1 conv, a depthwise 3x3
        # conv and a 1x1 projection back. Widths are the stock ones x 0.1, not rounded to multiples of 8: a stem of 3
        # channels, 16 blocks on inputs of 2, 2, 2, 3, 3, 3, 6, 6, 6, 6, 10, 10, 10, 16, 16, 16 channels (layers 0 and
        # 1 expand 2 to 12), the bottleneck channels tied across each run of residual blocks (2, 2, 3, 6, 10, 16, 32)
        # and the last 1x1 conv's 128. No TF "SAME" padding: its explicit pad before each depthwise conv leaves the
        # expanded channels unprunable (discovery labels the padded entries as carrying no channel).
        name="mobilenet_v2",
        model_class="MobileNetV2ForImageClassification",
        config=lambda: MobileNetV2Config(
            image_size=64,  # 2x2 features at the end: batch norm in training needs more than one value per channel
            depth_multiplier=0.1,
            depth_divisible_by=1,
            min_depth=1,
            tf_padding=False,
            finegrained_output=False,
            num_labels=3,
        ),
        auto_class="AutoModelForImageClassification",
        expected={"channel": 3 + 6 * (3 * 2 + 3 * 3 + 4 * 6 + 3 * 10 + 3 * 16) + (2 + 2 + 3 + 6 + 10 + 16 + 32) + 128},
        per_layer={"channel": 6 * 2},
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
