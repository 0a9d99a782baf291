"""Pieces of the pruned-model card: numbers, table rows, `model-index` entries, the schedule and the load section."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

from .graph.groups import ALL_KINDS
from .record import PruningRecord

logger = logging.getLogger(__name__)

KIND_NAMES = {"head": "attention heads", "kv_head": "KV heads", "neuron": "FFN neurons", "channel": "channels"}
# Class-name suffix -> (pipeline tag, Auto class). First match wins, so longer suffixes come first.
HEADS = (
    ("ForQuestionAnswering", "question-answering", "AutoModelForQuestionAnswering"),
    ("ForSequenceClassification", "text-classification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "token-classification", "AutoModelForTokenClassification"),
    ("ForMultipleChoice", "multiple-choice", "AutoModelForMultipleChoice"),
    ("ForImageClassification", "image-classification", "AutoModelForImageClassification"),
    ("ForMaskedLM", "fill-mask", "AutoModelForMaskedLM"),
    ("ForCausalLM", "text-generation", "AutoModelForCausalLM"),
    ("LMHeadModel", "text-generation", "AutoModelForCausalLM"),
    ("ForPreTraining", None, "AutoModelForPreTraining"),
)


# ---- numbers --------------------------------------------------------------------------------------------------------
def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_setting(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{item}`" for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return f"`{value}`" if isinstance(value, str) else str(value)


def format_metric(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}".rstrip("0").rstrip(".")


def count_text(value: Any) -> str:
    return f"{value:,}" if is_number(value) else "not measured"


def ratio_text(after: Any, before: Any) -> str:
    if not (is_number(after) and is_number(before)) or before == 0:
        return "–"
    return f"{after / before:.1%}"


def change_phrase(after: Any, before: Any) -> str:
    if not (is_number(after) and is_number(before)) or before == 0:
        return "its starting size was not recorded"
    return f"{1 - after / before:.1%} fewer than the starting model's {before:,}"


def latency_text(ratio: float | None) -> str:
    if ratio is None:
        return "not measured"
    speed = f"{1 / ratio:.2f}× faster" if ratio <= 1 else f"{ratio:.2f}× slower"
    return f"{ratio:.2f} ({speed})"


# ---- tables ---------------------------------------------------------------------------------------------------------
def dataset_text(dataset: str | None, description: str | None) -> str:
    """The card's dataset line: a link to the Hub dataset and/or the description of local data."""
    parts = [f"[`{dataset}`](https://huggingface.co/datasets/{dataset})"] if dataset else []
    parts += [description] if description else []
    return "; ".join(parts) or "not recorded"


def removed_rows(record: PruningRecord) -> list[dict[str, Any]]:
    """Groups removed, kept and in total, per kind (KV heads of grouped-query attention included)."""
    rows = []
    for kind in ALL_KINDS:
        families = [layer for layer in record.layers if layer.kind == kind]
        if families:
            kept, total = sum(f.kept for f in families), sum(f.total for f in families)
            rows.append({"kind": KIND_NAMES[kind], "removed": total - kept, "kept": kept, "total": total})
    return rows


def layer_rows(record: PruningRecord) -> list[dict[str, Any]]:
    """Kept and total groups per family, with blanks for a missing layer number or module."""
    return [
        {**layer.to_dict(), "layer": "" if layer.layer is None else layer.layer, "module": layer.module or "(model)"}
        for layer in record.layers
    ]


def eval_rows(pruned: dict[str, float], dense: dict[str, float]) -> list[dict[str, str]]:
    rows = []
    for name in [*pruned, *(key for key in dense if key not in pruned)]:
        mine, theirs = pruned.get(name), dense.get(name)
        change = "–" if mine is None or theirs is None else f"{mine - theirs:+.4f}".rstrip("0").rstrip(".")
        rows.append({"name": name, "pruned": format_metric(mine), "dense": format_metric(theirs), "change": change})
    return rows


def schedule_text(settings: dict[str, Any]) -> str | None:
    """Partition and pruning-end points, in optimizer steps when the run length is known (as `pruning_schedule`)."""
    if "target_sparsity" not in settings:
        return None
    total = settings.get("max_steps") if is_number(settings.get("max_steps")) and settings["max_steps"] > 0 else None

    def point(steps_key: str, ratio_key: str) -> str:
        steps, ratio = settings.get(steps_key) or 0, settings.get(ratio_key)
        if steps:
            return f"step {steps}"
        if ratio is None:
            return "not recorded"
        at = f" (step {int(ratio * total)})" if total else ""
        return f"{ratio:.0%} of training{at}"

    partition = point("partition_steps", "partition_ratio")
    end = point("pruning_end_steps", "pruning_end_ratio")
    budget = settings.get("sparsity_budget", "groups")
    periods = settings.get("num_partition_periods", 1)
    saliency = settings.get("dhspg_saliency")
    return (
        "warm-up, then the groups are scored"
        + (f" (`{saliency}` saliency)" if saliency else "")
        + f" and the redundant set is chosen at {partition}"
        + (f", re-chosen over {periods} periods" if periods and periods > 1 else "")
        + f"; DHSPG drives it to exactly zero by {end}, reaching target sparsity {settings['target_sparsity']} "
        + f"of the {budget}; training then continues on the kept groups"
        + (f" until step {total}." if total else ".")
    )


def model_index_results(
    metrics: dict[str, float], task: str | None, dataset: str | None, source: str | None
) -> list[EvalResult]:
    """`model-index` entries for the card metadata; none (with a warning) without both `task` and `dataset`."""
    if not metrics:
        return []
    if not task or not dataset:
        logger.warning(
            "The card's `model-index` metadata is left out: it needs both `task` and `dataset` (got %r and %r). The "
            "evaluation table is still written.",
            task,
            dataset,
        )
        return []
    url = source if source and re.match(r"https?://", source) else None
    return [
        EvalResult(
            task_type=task,
            dataset_type=dataset,
            dataset_name=dataset,
            metric_type=name,
            metric_value=value,
            source_url=url,
        )
        for name, value in metrics.items()
    ]


# ---- architecture and loading ---------------------------------------------------------------------------------------
def stock_class_name(config: dict[str, Any]) -> str:
    architectures = config.get("architectures") or []
    name = architectures[0] if architectures else "AutoModel"
    return name.removeprefix("OTO")


def pipeline_tag(class_name: str) -> str | None:
    return next((tag for suffix, tag, _ in HEADS if class_name.endswith(suffix)), None)


def _auto_class(config: dict[str, Any], class_name: str) -> str:
    """The Auto class that loads the saved class: from `auto_map` for `oto_*` configs, else from the class name."""
    saved = (config.get("architectures") or [None])[0]
    for auto, target in (config.get("auto_map") or {}).items():
        if saved and isinstance(target, str) and target.rsplit(".", 1)[-1] == saved and auto != "AutoConfig":
            return auto
    return next((auto for suffix, _, auto in HEADS if class_name.endswith(suffix)), "AutoModel")


def load_instructions(folder: Path, config: dict[str, Any], class_name: str) -> dict[str, Any]:
    """The load section: stock config, `oto_*` config with oto_hf, or `oto_*` config with remote code."""
    auto = _auto_class(config, class_name)
    model_type = config["model_type"]
    processor = None  # (variable, Auto class) of what is saved beside the model
    if (folder / "tokenizer_config.json").is_file():
        processor = ("tokenizer", "AutoTokenizer")
    elif (folder / "preprocessor_config.json").is_file():
        processor = ("processor", "AutoImageProcessor")
    imports = f"from transformers import {', '.join([auto, processor[1]] if processor else [auto])}"
    model_id = f'model_id = "{folder.resolve().name}"  # this folder, or its Hub repo id ("user/name") once uploaded'

    def code(*lines: str, remote: bool = False) -> str:
        # Without oto_hf, the tokenizer's and processor's Auto classes read the `oto_*` config too, and without
        # `trust_remote_code=True` they ask whether to run its code (transformers' AutoConfig), though they need none.
        arguments = "model_id, trust_remote_code=True" if remote else "model_id"
        extra = [f"{processor[0]} = {processor[1]}.from_pretrained({arguments})"] if processor else []
        return "\n".join([*lines[:-1], model_id, lines[-1], *extra])

    export = config.get("oto_export") or {}
    padding = (
        f" Padding the widths to what the format holds added {export['padded_parameters']:,} zero (or copied) "
        "parameters, which compute nothing new."
        if export.get("padded_parameters")
        else ""
    )
    if not model_type.startswith("oto_") and config.get("auto_map"):  # an export format with its own code (decilm)
        intro = (
            f"This folder is in the `{export.get('format', model_type)}` export format (`model_type` `{model_type}`), "
            "for serving engines (e.g. vLLM with `trust_remote_code=True`); transformers loads it with the modeling "
            f"file saved beside the weights.{padding}"
        )
        load = code(imports, f"model = {auto}.from_pretrained(model_id, trust_remote_code=True)", remote=True)
        return {"load_intro": intro, "load_snippets": [{"title": "With transformers only:", "code": load}]}
    if not model_type.startswith("oto_"):
        intro = (
            f"The pruned widths fit the stock `{model_type}` config, so plain transformers loads this model; oto_hf "
            f"is not needed.{padding}"
        )
        load = code(imports, f"model = {auto}.from_pretrained(model_id)")
        snippets = [{"title": "With transformers only:", "code": load}]
        return {"load_intro": intro, "load_snippets": snippets}
    intro = (
        f"The stock `{model_type.removeprefix('oto_')}` config cannot express the pruned widths, so the config has "
        f"type `{model_type}` and records every pruned shape."
    )
    snippets = [
        {
            "title": f"With oto_hf installed, import it first: it registers `{model_type}` with the Auto classes.",
            "code": code(
                f"import oto_hf  # registers {model_type} with the Auto classes",
                imports,
                f"model = {auto}.from_pretrained(model_id)",
            ),
        }
    ]
    remote = [name for name in (config.get("auto_map") or {}).values() if isinstance(name, str)]
    module = remote[0].split(".")[0] if remote else None
    if module and (folder / f"{module}.py").is_file():
        snippets.append(
            {
                "title": f"Without oto_hf, `trust_remote_code=True` runs `{module}.py` from this repository (it needs "
                "only torch and transformers; read it before trusting it):",
                "code": code(
                    imports, f"model = {auto}.from_pretrained(model_id, trust_remote_code=True)", remote=True
                ),
            }
        )
    return {"load_intro": intro, "load_snippets": snippets}
