"""`save_pruned`: write a pruned model in one of the registered export formats (`oto_hf/export/`)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from .export import ExportReport, get_format

logger = logging.getLogger(__name__)


def save_pruned(
    model: PreTrainedModel,
    output_dir: str | Path,
    tokenizer: Any = None,
    overwrite: bool = False,
    format: str = "auto",
    **options: Any,
) -> Path:
    """Save a model made by `construct_subnet` in a format that transformers (and, by format, engines) load.

    Formats (`oto_hf.export.registered_formats()` lists them all):

    - `"auto"` (default): when every layer kept the same widths and the stock config can express them (e.g. LLaMA
      heads, KV heads and `intermediate_size`; BERT's `intermediate_size`), the stock config, loadable without
      oto_hf. Otherwise the config has type `oto_<model_type>` and records every pruned shape (any per-layer widths,
      any architecture oto_hf prunes); it loads with the Auto classes after `import oto_hf`, or anywhere with
      `trust_remote_code=True` (the modeling file is saved beside the weights). No serving engine loads it.
    - `"stock"`: the model's own config type, which plain transformers and every engine that knows the architecture
      load. Per-layer widths are padded with exact zeros up to the largest of each kind (FFN neurons, query heads, KV
      heads; a KV head is copied where a layer's query groups are larger), checked against the pruned model's
      logits; the report says what that costs. LLaMA-family decoders (separate q/k/v/o and gate/up/down
      projections: LLaMA, Mistral, Qwen2, Qwen3, ...).
    - `"decilm"`: `DeciLMForCausalLM` (`nemotron-nas`) with `block_configs`, for vLLM: an exact FFN width per layer,
      a no-op attention or FFN per layer (erased or empty sub-blocks), query heads zero-padded to one count (vLLM
      reads one) and the fewest KV heads per layer (`kv_heads="uniform"`: the same in every layer). Configuration
      and modeling files ship beside the weights (`trust_remote_code=True`, no oto_hf needed). LLaMA-style causal
      LMs with RoPE and full attention (LLaMA, Mistral, Qwen2).
    - `"gguf"`: one GGUF file for llama.cpp, tokenizer included (pass a file path): the `llama` architecture for
      uniform widths, else `deci` with per-layer query heads, KV heads and FFN widths; LLaMA causal LMs. Option
      `dtype="f32"` or `"f16"`.

    A folder is written to a temporary directory, then renamed into place; nothing is left half-written on failure.

    Args:
        model (`PreTrainedModel`): the pruned model (or any transformers model).
        output_dir (`str` or `Path`): where to write (the file's path, for a format that writes one file).
        tokenizer (*optional*): a tokenizer or processor saved alongside.
        overwrite (`bool`, *optional*, defaults to `False`): replace a non-empty `output_dir`.
        format (`str`, *optional*, defaults to `"auto"`): a registered export format.
        **options: the format's own options (a `ValueError` names those it takes).

    Returns:
        `Path`: the folder (or file) written. `export_pruned` returns the format's `ExportReport` instead.
    """
    return export_pruned(model, output_dir, tokenizer=tokenizer, overwrite=overwrite, format=format, **options).path


def export_pruned(
    model: PreTrainedModel,
    output_dir: str | Path,
    tokenizer: Any = None,
    overwrite: bool = False,
    format: str = "auto",
    **options: Any,
) -> ExportReport:
    """`save_pruned`, returning the format's `ExportReport` (where it wrote, what padding was added and its cost)."""
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"save_pruned needs a transformers PreTrainedModel, got {type(model).__name__}. Save other modules with "
            "`torch.save(model, path)` or `safetensors.torch.save_model`."
        )
    export_format = get_format(format)
    export_format.check_options(options)
    output_dir = Path(output_dir)
    if export_format.writes == "folder" and output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"`output_dir` {str(output_dir)!r} exists and is not a directory.")
    if export_format.writes == "file" and output_dir.is_dir():
        raise ValueError(f"Format {format!r} writes one file, but {str(output_dir)!r} is a directory; name a file.")
    if output_dir.exists() and (output_dir.is_file() or any(output_dir.iterdir())) and not overwrite:
        raise ValueError(
            f"`output_dir` {str(output_dir)!r} is not empty. Choose another directory or pass `overwrite=True`."
        )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        report = export_format.writer(model, staging, tokenizer, **options)
        if export_format.writes == "file":
            _move_file_into_place(staging, output_dir, format)
        else:
            _move_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)  # a file format's emptied staging directory
    report.path = output_dir
    logger.info("Saved pruned model: %s", report.summary())
    return report


def _move_into_place(staging: Path, output_dir: Path) -> None:
    """Rename `staging` to `output_dir`; an existing folder is moved aside first and removed only after."""
    if not output_dir.exists():
        staging.rename(output_dir)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
    aside.rmdir()
    output_dir.rename(aside)
    try:
        staging.rename(output_dir)
    except BaseException:
        aside.rename(output_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _move_file_into_place(staging: Path, output_path: Path, format: str) -> None:
    """Move the one file a file format wrote into `staging` to `output_path` (an atomic replace)."""
    written = [p for p in staging.iterdir()]
    if len(written) != 1 or not written[0].is_file():
        raise RuntimeError(
            f"The {format!r} writer must write exactly one file, but wrote {sorted(p.name for p in written)}."
        )
    written[0].replace(output_path)
