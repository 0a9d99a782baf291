"""`ExportReport`: what an export format wrote, what it padded and what the padding costs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The config key that records the export format and what its padding costs (next to `oto_pruning_summary`, whose
# parameter counts are the pruned model's, before padding).
EXPORT_KEY = "oto_export"


@dataclass(frozen=True)
class PaddedWidth:
    """One layer's width of one kind before and after zero padding.

    Args:
        layer (`int`): the decoder layer's index.
        kind (`str`): `"ffn"` (neurons), `"heads"` (query heads) or `"kv_heads"`.
        kept (`int`): the width the pruned model has.
        written (`int`): the width written (`kept` plus exact zeros, or KV heads copied to split a query group).
    """

    layer: int
    kind: str
    kept: int
    written: int


@dataclass
class ExportReport:
    """What `save_pruned` wrote in one format.

    Args:
        format (`str`): the format's registered name.
        path (`Path`, *optional*): the folder or file written (set once it is in place).
        padded (`list[PaddedWidth]`): every layer width that was padded (empty when nothing was).
        padded_parameters (`int`): parameters added by padding (zeros or copies), over the pruned model's.
        padded_flops_per_token (`int`): FLOPs per token the padding adds in the linear layers (2 per weight).
        padded_attention_flops_per_context_token (`int`): FLOPs the padded query heads add per token for each token
            of context (scores and weighted values: 4 x head_dim per head).
        padded_kv_bytes_per_token (`int`): KV-cache bytes per token the padded KV heads add, at the saved dtype.
        notes (`list[str]`): anything else worth knowing (what the format left out, how to load it).
    """

    format: str
    path: Path | None = None
    padded: list[PaddedWidth] = field(default_factory=list)
    padded_parameters: int = 0
    padded_flops_per_token: int = 0
    padded_attention_flops_per_context_token: int = 0
    padded_kv_bytes_per_token: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph for logs: where, and what the padding costs."""
        text = f"format {self.format!r} at {self.path}"
        if self.padded:
            kinds = sorted({p.kind for p in self.padded})
            text += (
                f"; padded {len(self.padded)} layer widths ({', '.join(kinds)}): +{self.padded_parameters:,} "
                f"parameters, +{self.padded_flops_per_token:,} linear FLOPs/token, "
                f"+{self.padded_attention_flops_per_context_token:,} attention FLOPs/token per context token, "
                f"+{self.padded_kv_bytes_per_token:,} KV-cache bytes/token"
            )
        else:
            text += "; nothing padded"
        return text + "".join(f"; {note}" for note in self.notes)
