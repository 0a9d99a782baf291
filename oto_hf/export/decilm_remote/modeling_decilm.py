"""`DeciLMForCausalLM`: the LLaMA decoder with per-layer KV heads, FFN widths and no-op sub-blocks (`block_configs`).

Written by oto_hf (`save_pruned(..., format="decilm")`); imports only torch and transformers. The weights have the
stock LLaMA names; a no-op attention or FFN has no weights (not even its norm) and passes the residual stream on.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from .configuration_decilm import DeciLMConfig


class DeciLMMLP(nn.Module):
    """The gated LLaMA MLP with its own width."""

    def __init__(self, config: DeciLMConfig, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def _attention(config: DeciLMConfig, layer_idx: int, n_heads_in_group: int) -> LlamaAttention:
    """`LlamaAttention` with this layer's KV heads (and q/k/v biases apart from o_proj's when `qkv_bias` says so)."""
    if config.num_attention_heads % n_heads_in_group:
        raise ValueError(
            f"Layer {layer_idx}: n_heads_in_group {n_heads_in_group} does not divide num_attention_heads "
            f"{config.num_attention_heads}."
        )
    layer_config = copy.copy(config)
    layer_config.num_key_value_heads = config.num_attention_heads // n_heads_in_group
    attention = LlamaAttention(layer_config, layer_idx)
    qkv_bias = getattr(config, "qkv_bias", config.attention_bias)
    if qkv_bias != config.attention_bias:
        for name in ("q_proj", "k_proj", "v_proj"):
            old = getattr(attention, name)
            setattr(attention, name, nn.Linear(old.in_features, old.out_features, bias=qkv_bias))
    return attention


class DeciLMDecoderLayer(GradientCheckpointingLayer):
    """A LLaMA decoder layer whose attention and FFN are each either present (with this layer's widths) or no-ops."""

    def __init__(self, config: DeciLMConfig, layer_idx: int) -> None:
        super().__init__()
        block = config.block_configs[layer_idx]
        attention, ffn = block.attention, block.ffn
        if attention.get("replace_with_linear") or ffn.get("replace_with_linear"):
            raise ValueError(f"Layer {layer_idx}: `replace_with_linear` sub-blocks are not supported by this file.")
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.attention_is_no_op = bool(attention.no_op)
        self.ffn_is_no_op = bool(ffn.no_op)
        if not self.attention_is_no_op:
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.self_attn = _attention(config, layer_idx, attention.n_heads_in_group)
        if not self.ffn_is_no_op:
            self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.mlp = DeciLMMLP(config, ffn.intermediate_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.attention_is_no_op:
            self._advance_cache(hidden_states, kwargs)
        else:
            attention_output, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            hidden_states = hidden_states + attention_output
        if not self.ffn_is_no_op:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states

    def _advance_cache(self, hidden_states: torch.Tensor, kwargs: dict[str, Any]) -> None:
        """Store zero KV heads for the new tokens: the cache reads the sequence length from its layers (layer 0 by
        default), so a layer without attention must still count the tokens; it holds no values."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            batch, length = hidden_states.shape[:2]
            empty = hidden_states.new_zeros(batch, 0, length, self.head_dim)
            cache.update(empty, empty, self.layer_idx)


class DeciLMPreTrainedModel(LlamaPreTrainedModel):
    config_class = DeciLMConfig
    _no_split_modules = ["DeciLMDecoderLayer"]
    _can_record_outputs = {"hidden_states": DeciLMDecoderLayer, "attentions": LlamaAttention}


class DeciLMModel(DeciLMPreTrainedModel, LlamaModel):
    """`LlamaModel` (its forward) with `DeciLMDecoderLayer`s."""

    def __init__(self, config: DeciLMConfig) -> None:
        DeciLMPreTrainedModel.__init__(self, config)
        self.padding_idx = getattr(config, "pad_token_id", None)
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([DeciLMDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class DeciLMForCausalLM(DeciLMPreTrainedModel, LlamaForCausalLM):
    """`LlamaForCausalLM` (its forward and `generate`) over a `DeciLMModel`."""

    def __init__(self, config: DeciLMConfig) -> None:
        DeciLMPreTrainedModel.__init__(self, config)
        self.model = DeciLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
