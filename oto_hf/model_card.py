"""Model cards for pruned models: `write_model_card` renders `model_cards/pruned_model_card.md` with `ModelCard`."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import TrainingArguments

from ._version import __version__
from .training_args import OTOTrainingArguments

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "pruned_model_card.md"
PLOT_NAME = "kept_per_layer.png"
CARD_TAGS = ["oto_hf", "pruning", "structured-pruning", "only-train-once"]
KINDS = ("head", "neuron", "channel")
KIND_NAMES = {"head": "attention heads", "neuron": "FFN neurons", "channel": "channels"}

# Every OTOTrainingArguments field of its own (so that a new argument is never missing from cards), then the
# TrainingArguments fields that matter for reproduction. The arguments are never dumped whole: they hold secrets such
# as `hub_token`.
_TRAINER_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}
OTO_SETTINGS = tuple(f.name for f in dataclasses.fields(OTOTrainingArguments) if f.name not in _TRAINER_FIELDS)
TRAINING_SETTINGS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "seed",
)
# Trainer metrics that are not model quality: left out of the evaluation table and `model-index`.
NON_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "step")
METRIC_PREFIXES = ("eval_", "test_", "predict_")

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


def write_model_card(
    output_dir: str | Path,
    *,
    model: Any = None,
    base_model: str | None = None,
    task: str | None = None,
    dataset: str | None = None,
    training_args: Any = None,
    eval_results: dict[str, float] | None = None,
    dense_eval_results: dict[str, float] | None = None,
    latency_ratio: float | None = None,
    metric_source: str | None = None,
    language: str | None = "en",
    license: str | None = None,
) -> Path:
    """Write `README.md` (and a `kept_per_layer.png` plot) into a folder written by `oto_hf.save_pruned`.

    The card has Hub metadata (`library_name: transformers`, `base_model`, tags `oto_hf` and `pruning`, datasets,
    `pipeline_tag` and a `model-index` with the evaluation results) and sections on the starting model, task and
    dataset, the OTO/DHSPG settings, the groups removed per kind and per layer, parameters and FLOPs before and after,
    the latency ratio, the evaluation results, how to load the folder, and how to cite OTO. An existing `README.md` is
    replaced. The plot needs matplotlib; without it a warning is logged and the card has no image.

    Args:
        output_dir (`str` or `Path`):
            A folder written by `save_pruned` (it must hold `config.json`).
        model (`PreTrainedModel`, *optional*):
            The pruned model. Its `oto_pruning` record gives the figures; without it they come from the
            `oto_pruning_summary` in `config.json`.
        base_model (`str`, *optional*):
            Hub id of the starting model, e.g. `"google-bert/bert-base-uncased"`.
        task (`str`, *optional*):
            Hub pipeline tag, e.g. `"question-answering"`. Defaults to the one implied by the saved class name.
        dataset (`str`, *optional*):
            Hub id of the training/evaluation dataset, e.g. `"rajpurkar/squad"`.
        training_args (`OTOTrainingArguments`, `TrainingArguments` or `dict`, *optional*):
            The arguments of the training run; only the OTO settings and the main optimisation settings are shown.
        eval_results (`dict[str, float]`, *optional*):
            Metrics of the pruned model, e.g. `{"exact_match": 80.1, "f1": 87.9}` or the output of
            `Trainer.evaluate()` (`eval_` prefixes are dropped, as are runtime and throughput entries).
        dense_eval_results (`dict[str, float]`, *optional*):
            The same metrics for the dense starting model, shown side by side.
        latency_ratio (`float`, *optional*):
            Pruned latency over dense latency, e.g. `compression_report(...)["latency_ratio"]`.
        metric_source (`str`, *optional*):
            Where the evaluation figures come from: a sentence, or a URL (also recorded in `model-index`).
        language (`str`, *optional*, defaults to `"en"`):
            Language tag of the metadata; `None` leaves it out (e.g. for vision models).
        license (`str`, *optional*):
            License tag, e.g. `"apache-2.0"`; use the starting model's license.

    Returns:
        `Path`: the `README.md` written.

    Example:
    ```python
    >>> from oto_hf import save_pruned
    >>> from oto_hf.model_card import write_model_card
    >>> folder = save_pruned(pruned, "outputs/bert-squad-pruned")
    >>> write_model_card(folder, model=pruned, base_model="google-bert/bert-base-uncased", dataset="rajpurkar/squad",
    ...                  training_args=trainer.args, eval_results={"f1": 87.9}, dense_eval_results={"f1": 88.5})
    ```
    """
    folder = _check_folder(output_dir)
    kwargs = dict(
        model=model,
        base_model=base_model,
        task=task,
        dataset=dataset,
        training_args=training_args,
        eval_results=eval_results,
        dense_eval_results=dense_eval_results,
        latency_ratio=latency_ratio,
        metric_source=metric_source,
        language=language,
        license=license,
    )
    card = build_model_card(folder, plot_file=PLOT_NAME, **kwargs)  # checks every input before anything is written
    if not _write_plot(_pruning_record(folder, model)["layers"], folder / PLOT_NAME):
        card = build_model_card(folder, plot_file=None, **kwargs)
    path = folder / "README.md"
    if path.exists():
        logger.info("Replacing the model card %s", path)
    card.save(path)
    logger.info("Wrote model card %s", path)
    return path


def build_model_card(
    output_dir: str | Path,
    *,
    model: Any = None,
    base_model: str | None = None,
    task: str | None = None,
    dataset: str | None = None,
    training_args: Any = None,
    eval_results: dict[str, float] | None = None,
    dense_eval_results: dict[str, float] | None = None,
    latency_ratio: float | None = None,
    metric_source: str | None = None,
    language: str | None = "en",
    license: str | None = None,
    plot_file: str | None = None,
) -> ModelCard:
    """Render the card of `write_model_card` without writing anything (e.g. for a dry run).

    Args:
        output_dir, model, base_model, task, dataset, training_args, eval_results, dense_eval_results, latency_ratio,
        metric_source, language, license: as in `write_model_card`.
        plot_file (`str`, *optional*):
            File name of the kept-per-layer plot to show, relative to the card; `None` shows no image.

    Returns:
        `huggingface_hub.ModelCard`: the card (`card.data` holds the metadata, `str(card)` the text).
    """
    folder = _check_folder(output_dir)
    config = _read_config(folder)
    record = _pruning_record(folder, model, config)
    for name, value in (("base_model", base_model), ("task", task), ("dataset", dataset)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"`{name}` must be a non-empty string such as a Hub id, got {value!r}.")
    if latency_ratio is not None and not (_is_number(latency_ratio) and latency_ratio > 0):
        raise ValueError(f"`latency_ratio` must be a positive number (pruned / dense latency), got {latency_ratio!r}.")
    pruned_metrics = _metrics(eval_results, "eval_results")
    dense_metrics = _metrics(dense_eval_results, "dense_eval_results")
    if dense_metrics and not pruned_metrics:
        raise ValueError("`dense_eval_results` was given without `eval_results`; pass the pruned model's metrics too.")

    architecture = _stock_class_name(config)
    task = task or _pipeline_tag(architecture)
    model_name = folder.resolve().name
    results = _eval_results(pruned_metrics, task, dataset, metric_source)
    card_data = ModelCardData(
        base_model=base_model,
        datasets=[dataset] if dataset else None,
        eval_results=results or None,
        language=language,
        library_name="transformers",
        license=license,
        metrics=list(pruned_metrics) or None,
        model_name=model_name if results else None,  # `model-index` needs it; alone it is not Hub metadata
        pipeline_tag=task,
        tags=CARD_TAGS,
    )
    settings, args_type = _training_settings(training_args)
    base_model_type = config["model_type"].removeprefix("oto_")
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        oto_hf_version=__version__,
        model_name=model_name,
        architecture=architecture,
        architecture_phrase=(
            f"version of [`{base_model}`](https://huggingface.co/{base_model})"
            if base_model
            else f"`{architecture}` model"
        ),
        base_model=base_model,
        base_model_type=base_model_type,
        task_text=f"`{task}`" if task else "not recorded",
        dataset_text=f"[`{dataset}`](https://huggingface.co/datasets/{dataset})" if dataset else "not recorded",
        hyperparameters=[(name, _format_setting(value)) for name, value in settings.items()],
        training_args_type=args_type,
        has_oto_settings=any(name in settings for name in OTO_SETTINGS),
        schedule=_schedule(settings),
        removed_rows=_removed_rows(record),
        layer_rows=[{**layer, "layer": "" if layer["layer"] is None else layer["layer"],
                     "module": layer["module"] or "(model)"} for layer in record["layers"]],
        plot_file=plot_file,
        params_before=_count(record.get("params_before")),
        params_after=_count(record.get("params_after")),
        params_ratio=_ratio(record.get("params_after"), record.get("params_before")),
        params_change=_change_phrase(record.get("params_after"), record.get("params_before")),
        flops_before=_count(record.get("flops_before")),
        flops_after=_count(record.get("flops_after")),
        flops_ratio=_ratio(record.get("flops_after"), record.get("flops_before")),
        latency_text=_latency_text(latency_ratio),
        latency_note=(
            "The latency ratio (pruned / starting model) was measured by the training run on the same inputs and "
            "hardware for both models (`oto_hf.report.compression_report`); it depends on that hardware and batch."
            if latency_ratio is not None
            else "Latency was not measured (pass `latency_ratio=`, e.g. `compression_report(...)[\"latency_ratio\"]`)."
        ),
        eval_rows=_eval_rows(pruned_metrics, dense_metrics),
        has_dense=bool(dense_metrics),
        metric_source=metric_source,
        **_load_instructions(folder, config, architecture),
    )


def template_path(name: str = TEMPLATE_NAME) -> Path:
    """Where the card template is: `model_cards/` of a source checkout, else the copy installed with the wheel."""
    source = Path(__file__).resolve().parents[1] / "model_cards" / name
    if source.is_file():
        return source
    try:
        files = importlib.metadata.distribution("oto-hf").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == name and "model_cards" in file.parts:
            installed = Path(file.locate()).resolve()
            if installed.is_file():
                return installed
    raise FileNotFoundError(
        f"The model card template {name!r} is missing: it is neither in {source.parent} nor installed with oto-hf. "
        "Reinstall oto-hf (`pip install --force-reinstall oto-hf`)."
    )


# ---- inputs ---------------------------------------------------------------------------------------------------------
def _check_folder(output_dir: str | Path) -> Path:
    if not isinstance(output_dir, (str, Path)):
        raise TypeError(f"`output_dir` must be a str or Path, got {type(output_dir).__name__}.")
    folder = Path(output_dir)
    if not folder.is_dir():
        raise ValueError(f"`output_dir` {str(folder)!r} is not a folder. Pass the folder written by `save_pruned`.")
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"`output_dir` {str(folder)!r} has no config.json, so it is not a saved transformers model. Pass the "
            "folder written by `oto_hf.save_pruned(model, output_dir)`."
        )
    return folder


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{folder / 'config.json'} is not valid JSON ({error}); save the model again.") from error
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{folder / 'config.json'} has no `model_type`; it is not a transformers config.")
    return config


def _pruning_record(folder: Path, model: Any, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pruning figures: `model.oto_pruning` when a model is given, else `oto_pruning_summary` of config.json."""
    if model is not None and isinstance(getattr(model, "oto_pruning", None), Mapping):
        record = model.oto_pruning
        source = "`model.oto_pruning`"
    else:  # no model, or one reloaded from a folder: the summary save_pruned wrote
        record = (config if config is not None else _read_config(folder)).get("oto_pruning_summary")
        if not isinstance(record, Mapping):
            raise ValueError(
                f"{folder / 'config.json'} has no `oto_pruning_summary`, so there are no pruning figures: save a "
                "model made by `construct_subnet` with `oto_hf.save_pruned`, or pass the pruned model as `model=`."
            )
        source = "`oto_pruning_summary` in config.json"
    layers = record.get("layers")
    if not isinstance(layers, list) or not all(
        isinstance(layer, Mapping) and {"kind", "layer", "module", "total", "kept"} <= set(layer) for layer in layers
    ):
        raise ValueError(f"{source} has no valid `layers` list of {{kind, layer, module, total, kept}} entries.")
    return dict(record)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metrics(results: dict[str, float] | None, argument: str) -> dict[str, float]:
    """Metric name -> value, without Trainer prefixes and runtime/throughput entries."""
    if results is None:
        return {}
    if not isinstance(results, Mapping):
        raise ValueError(f"`{argument}` must be a dict of metric name to number, got {type(results).__name__}.")
    metrics: dict[str, float] = {}
    for key, value in results.items():
        name = str(key)
        for prefix in METRIC_PREFIXES:
            name = name.removeprefix(prefix)
        if name in NON_METRICS:
            continue
        if hasattr(value, "item"):  # numpy / torch scalars
            value = value.item()
        if not _is_number(value):
            raise ValueError(f"`{argument}[{key!r}]` must be a finite number, got {value!r}.")
        metrics[name] = float(value)
    return metrics


def _training_settings(training_args: Any) -> tuple[dict[str, Any], str | None]:
    """The shown subset of the training arguments, and the arguments' class name."""
    if training_args is None:
        return {}, None
    if isinstance(training_args, Mapping):
        values, args_type = dict(training_args), None
    elif callable(getattr(training_args, "to_dict", None)):
        values, args_type = training_args.to_dict(), type(training_args).__name__
    else:
        raise ValueError(
            "`training_args` must be OTOTrainingArguments, TrainingArguments, a dict or None, got "
            f"{type(training_args).__name__}."
        )
    shown = {name: values[name] for name in (*OTO_SETTINGS, *TRAINING_SETTINGS) if values.get(name) is not None}
    return shown, args_type


def _schedule(settings: dict[str, Any]) -> str | None:
    """Partition and pruning-end points, in optimizer steps when the run length is known (as `pruning_schedule`)."""
    if "target_sparsity" not in settings:
        return None
    total = settings.get("max_steps") if _is_number(settings.get("max_steps")) and settings["max_steps"] > 0 else None

    def point(steps_key: str, ratio_key: str) -> tuple[str, int | None]:
        steps, ratio = settings.get(steps_key) or 0, settings.get(ratio_key)
        if steps:
            return f"step {steps}", int(steps)
        if ratio is None:
            return "not recorded", None
        at = int(ratio * total) if total else None
        return f"{ratio:.0%} of training" + (f" (step {at})" if at is not None else ""), at

    partition, _ = point("partition_steps", "partition_ratio")
    end, _ = point("pruning_end_steps", "pruning_end_ratio")
    budget = settings.get("sparsity_budget", "groups")
    periods = settings.get("num_partition_periods", 1)
    return (
        f"warm-up, then the groups are scored and the redundant set is chosen at {partition}"
        + (f", re-chosen over {periods} periods" if periods and periods > 1 else "")
        + f"; DHSPG drives it to exactly zero by {end}, reaching target sparsity {settings['target_sparsity']} "
        + f"of the {budget}; training then continues on the kept groups"
        + (f" until step {total}." if total else ".")
    )


# ---- formatting --------------------------------------------------------------------------------------------------
def _format_setting(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{item}`" for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return f"`{value}`" if isinstance(value, str) else str(value)


def _format_metric(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _count(value: Any) -> str:
    return f"{value:,}" if _is_number(value) else "not measured"


def _ratio(after: Any, before: Any) -> str:
    if not (_is_number(after) and _is_number(before)) or before == 0:
        return "–"
    return f"{after / before:.1%}"


def _change_phrase(after: Any, before: Any) -> str:
    if not (_is_number(after) and _is_number(before)) or before == 0:
        return "its starting size was not recorded"
    return f"{1 - after / before:.1%} fewer than the starting model's {before:,}"


def _latency_text(ratio: float | None) -> str:
    if ratio is None:
        return "not measured"
    speed = f"{1 / ratio:.2f}× faster" if ratio <= 1 else f"{ratio:.2f}× slower"
    return f"{ratio:.2f} ({speed})"


def _removed_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    removed = record.get("removed_groups") or {}
    rows = []
    for kind in KINDS:
        families = [layer for layer in record["layers"] if layer["kind"] == kind]
        if not families and not removed.get(kind):
            continue
        kept, total = sum(f["kept"] for f in families), sum(f["total"] for f in families)
        removed_count = removed.get(kind, total - kept)
        rows.append({"kind": KIND_NAMES[kind], "removed": removed_count, "kept": kept, "total": total})
    return rows


def _eval_rows(pruned: dict[str, float], dense: dict[str, float]) -> list[dict[str, str]]:
    rows = []
    for name in [*pruned, *(key for key in dense if key not in pruned)]:
        mine, theirs = pruned.get(name), dense.get(name)
        change = "–" if mine is None or theirs is None else f"{mine - theirs:+.4f}".rstrip("0").rstrip(".")
        rows.append({"name": name, "pruned": _format_metric(mine), "dense": _format_metric(theirs), "change": change})
    return rows


def _eval_results(
    metrics: dict[str, float], task: str | None, dataset: str | None, source: str | None
) -> list[EvalResult]:
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


# ---- architecture and loading --------------------------------------------------------------------------------------
def _stock_class_name(config: dict[str, Any]) -> str:
    architectures = config.get("architectures") or []
    name = architectures[0] if architectures else "AutoModel"
    return name.removeprefix("OTO")


def _pipeline_tag(class_name: str) -> str | None:
    return next((tag for suffix, tag, _ in HEADS if class_name.endswith(suffix)), None)


def _auto_class(config: dict[str, Any], class_name: str) -> str:
    """The Auto class that loads the saved class: from `auto_map` for `oto_*` configs, else from the class name."""
    saved = (config.get("architectures") or [None])[0]
    for auto, target in (config.get("auto_map") or {}).items():
        if saved and isinstance(target, str) and target.rsplit(".", 1)[-1] == saved and auto != "AutoConfig":
            return auto
    return next((auto for suffix, _, auto in HEADS if class_name.endswith(suffix)), "AutoModel")


def _load_instructions(folder: Path, config: dict[str, Any], class_name: str) -> dict[str, Any]:
    """The load section: stock config, `oto_*` config with oto_hf, or `oto_*` config with remote code."""
    auto = _auto_class(config, class_name)
    model_type = config["model_type"]
    extra_imports, extra_lines = [], []
    if (folder / "tokenizer_config.json").is_file():
        extra_imports, extra_lines = ["AutoTokenizer"], ["tokenizer = AutoTokenizer.from_pretrained(model_id)"]
    elif (folder / "preprocessor_config.json").is_file():
        extra_imports = ["AutoImageProcessor"]
        extra_lines = ["processor = AutoImageProcessor.from_pretrained(model_id)"]
    imports = f"from transformers import {', '.join([auto, *extra_imports])}"
    model_id = f'model_id = "{folder.resolve().name}"  # this folder, or its Hub repo id ("user/name") once uploaded'

    def code(*lines: str) -> str:
        return "\n".join([*lines[:-1], model_id, lines[-1], *extra_lines])

    if not model_type.startswith("oto_"):
        intro = (
            f"The pruned widths fit the stock `{model_type}` config, so plain transformers loads this model; oto_hf "
            "is not needed."
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
                "code": code(imports, f"model = {auto}.from_pretrained(model_id, trust_remote_code=True)"),
            }
        )
    return {"load_intro": intro, "load_snippets": snippets}


# ---- plot -----------------------------------------------------------------------------------------------------------
def _write_plot(layers: list[Mapping[str, Any]], path: Path) -> bool:
    """Bars of kept and total groups per layer, one panel per kind; False (with a warning) without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("No kept-per-layer plot in the model card: matplotlib is missing (pip install matplotlib).")
        return False
    kinds = [kind for kind in KINDS if any(layer["kind"] == kind for layer in layers)]
    if not kinds:
        return False
    width = min(12.0, max(4.0, 1.5 + 0.35 * max(sum(layer["kind"] == k for layer in layers) for k in kinds)))
    # Figure without pyplot: no global backend is chosen or changed; PNG output goes through Agg.
    figure = Figure(figsize=(width, 2.2 * len(kinds)), dpi=100, layout="constrained")
    axes = figure.subplots(len(kinds), 1, squeeze=False)[:, 0]
    for ax, kind in zip(axes, kinds):
        families = [layer for layer in layers if layer["kind"] == kind]
        positions = range(len(families))
        ax.bar(positions, [f["total"] for f in families], color="#d9d9d9", label="total")
        ax.bar(positions, [f["kept"] for f in families], color="#1f77b4", label="kept")
        labels = [_plot_label(f) for f in families]
        ax.set_xticks(list(positions), labels, fontsize=7, rotation=90 if len(families) > 16 else 0)
        ax.set_ylabel(KIND_NAMES[kind], fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    axes[0].set_title("Groups kept per layer", fontsize=9)
    axes[0].legend(fontsize=7, ncols=2, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    axes[-1].set_xlabel("layer", fontsize=8)
    figure.savefig(path, format="png", metadata={"Software": None})
    return True


def _plot_label(layer: Mapping[str, Any]) -> str:
    if layer["layer"] is not None:
        return str(layer["layer"])
    return (layer["module"] or "model").rsplit(".", 1)[-1]
