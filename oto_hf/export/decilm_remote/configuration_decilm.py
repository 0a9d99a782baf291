"""`DeciLMConfig` (`model_type: "nemotron-nas"`): a LLaMA config whose layers each have their own `block_configs`.

Written by oto_hf (`save_pruned(..., format="decilm")`); imports only transformers. Each entry of `block_configs` is
`{"attention": {"no_op", "replace_with_linear", "n_heads_in_group"}, "ffn": {"no_op", "replace_with_linear",
"intermediate_size", "ffn_mult"?}}`. Engines read the entries by attribute (`block_config.attention.no_op`) and test
for optional keys with `hasattr` (vLLM: `hasattr(block_config.ffn, "ffn_mult")`), so the entries are dicts whose keys
read as attributes and whose absent keys are absent attributes.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class BlockSection(dict):
    """A dict whose keys also read as attributes; it stays a dict, so the config saves as plain JSON."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def as_block(value: dict[str, Any]) -> BlockSection:
    """`value` (and the dicts inside it) as `BlockSection`s."""
    return BlockSection({k: as_block(v) if isinstance(v, dict) else v for k, v in value.items()})


class DeciLMConfig(PretrainedConfig):
    """A LLaMA-style config with per-layer `block_configs`; the query-head count and head_dim are global.

    Layer i has `num_attention_heads // block_configs[i].attention.n_heads_in_group` KV heads (none when its
    attention is a no-op) and `block_configs[i].ffn.intermediate_size` FFN neurons (none when its FFN is a no-op).
    `qkv_bias` (set only when it differs from `attention_bias`) gives q/k/v biases without an o_proj bias.
    """

    model_type = "nemotron-nas"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        rope_parameters: dict[str, Any] | None = None,
        attention_bias: bool = False,
        qkv_bias: bool | None = None,
        attention_dropout: float = 0.0,
        mlp_bias: bool = False,
        block_configs: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.tie_word_embeddings = tie_word_embeddings
        self.rope_parameters = rope_parameters or {"rope_type": "default", "rope_theta": 10000.0}
        self.attention_bias = attention_bias
        if qkv_bias is not None:  # engines test `hasattr(config, "qkv_bias")`: absent unless it is set
            self.qkv_bias = qkv_bias
        self.attention_dropout = attention_dropout
        self.mlp_bias = mlp_bias
        blocks = block_configs if block_configs is not None else [{}] * num_hidden_layers
        self.block_configs = [as_block(dict(block)) for block in blocks]
        if len(self.block_configs) != num_hidden_layers:
            raise ValueError(
                f"`block_configs` has {len(self.block_configs)} entries for {num_hidden_layers} layers; give one "
                "per layer."
            )
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
