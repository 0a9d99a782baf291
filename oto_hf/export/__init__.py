"""Export formats of `save_pruned(..., format=...)`: one module per format, registered here by name.

`register_format` (in `registry.py`) says how a new format is added.
"""

from .auto import write_auto
from .decilm import write_decilm
from .gguf import write_gguf
from .registry import ExportFormat, get_format, register_format, registered_formats
from .report import ExportReport, PaddedWidth
from .stock import write_stock

register_format(
    "auto",
    write_auto,
    description="the stock config when every layer kept the same widths, else an `oto_<type>` config with any "
    "per-layer widths (transformers only: `import oto_hf` or `trust_remote_code=True`)",
)
register_format(
    "stock",
    write_stock,
    description="the model's own config type (e.g. LlamaConfig) that plain transformers and engines load; per-layer "
    "widths zero-padded (exactly) to the largest; LLaMA-family decoders",
)
register_format(
    "gguf",
    write_gguf,
    writes="file",
    description="one GGUF file for llama.cpp, tokenizer included: the `llama` architecture when every layer has the "
    "same widths, else `deci` with per-layer query heads, KV heads and FFN widths; LLaMA causal LMs, f32 or f16",
)
register_format(
    "decilm",
    write_decilm,
    description="DeciLMForCausalLM (nemotron-nas block_configs) for vLLM: exact per-layer FFN widths, no-op "
    "sub-blocks, query heads zero-padded to one count, KV heads per layer (option kv_heads); code shipped beside "
    "the weights (trust_remote_code); LLaMA, Mistral, Qwen2 causal LMs",
)

__all__ = ["ExportFormat", "ExportReport", "PaddedWidth", "get_format", "register_format", "registered_formats"]
