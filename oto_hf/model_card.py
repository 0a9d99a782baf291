"""Model cards for pruned models: `write_model_card` renders the `pruned_model_card.md` template with `ModelCard`.

The template ships inside the package as `oto_hf.templates` (its source is the repository's `model_cards/` folder).
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from . import card_format as fmt
from ._version import __version__
from .graph.groups import ALL_KINDS
from .pruned_folder import read_pruned_folder
from .record import LayerWidths, PruningRecord
from .training_args import oto_field_names, training_settings

logger = logging.getLogger(__name__)

TEMPLATES_PACKAGE = "oto_hf.templates"
TEMPLATE_NAME = "pruned_model_card.md"
PLOT_NAME = "kept_per_layer.png"
CARD_TAGS = ["oto_hf", "pruning", "structured-pruning", "only-train-once"]

# Every OTOTrainingArguments field of its own: a card whose settings hold one of them describes an OTO run.
OTO_SETTINGS = tuple(oto_field_names())
# Trainer metrics that are not model quality: left out of the evaluation table and `model-index`.
NON_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "step")
METRIC_PREFIXES = ("eval_", "test_", "predict_")


@dataclass
class CardInputs:
    """What a model card says beyond the saved folder: the starting model, the data, the settings and the results.

    `write_model_card(folder, **fields)` and `build_model_card(folder, **fields)` take these fields as keyword
    arguments, or one `CardInputs` as `inputs`. Every field is checked here, before anything is written.

    Args:
        model (`PreTrainedModel`, *optional*):
            The pruned model. Its `oto_pruning` record gives the figures; without it they come from the
            `oto_pruning_summary` in `config.json`.
        base_model (`str`, *optional*):
            Hub id of the starting model, e.g. `"google-bert/bert-base-uncased"`.
        task (`str`, *optional*):
            Hub pipeline tag, e.g. `"question-answering"`. Defaults to the one implied by the saved class name.
        dataset (`str`, *optional*):
            Hub id of the training/evaluation dataset, e.g. `"rajpurkar/squad"`.
        dataset_description (`str`, *optional*):
            What the data was, in a sentence, for data that is not (only) a Hub dataset: local files, their
            source, licence and split. Shown beside or instead of `dataset`.
        model_name (`str`, *optional*):
            The card's title: what the model is. Defaults to "<base model> pruned with OTO", else the folder name.
        training_args (`OTOTrainingArguments`, `TrainingArguments` or `dict`, *optional*):
            The arguments of the training run; only the OTO settings and the main optimisation settings are shown.
            Defaults to the settings in the pruning record (recorded by `OTOTrainer`).
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
        tags (`str` or `list[str]`, *optional*):
            Hub tags added after oto_hf's own (`oto_hf`, `pruning`, `structured-pruning`, `only-train-once`).
    """

    model: Any = None
    base_model: str | None = None
    task: str | None = None
    dataset: str | None = None
    dataset_description: str | None = None
    model_name: str | None = None
    training_args: Any = None
    eval_results: Mapping[str, float] | None = None
    dense_eval_results: Mapping[str, float] | None = None
    latency_ratio: float | None = None
    metric_source: str | None = None
    language: str | None = "en"
    license: str | None = None
    tags: str | Sequence[str] | None = None

    def __post_init__(self) -> None:
        for name in ("base_model", "task", "dataset", "dataset_description", "model_name"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"`{name}` must be a non-empty string such as a Hub id, got {value!r}.")
        ratio = self.latency_ratio
        if ratio is not None and not (fmt.is_number(ratio) and ratio > 0):
            raise ValueError(f"`latency_ratio` must be a positive number (pruned / dense latency), got {ratio!r}.")
        if self.dense_metrics() and not self.metrics():
            raise ValueError(
                "`dense_eval_results` was given without `eval_results`; pass the pruned model's metrics too."
            )
        if isinstance(self.tags, str):
            self.tags = [self.tags]
        if self.tags is not None and not all(isinstance(tag, str) and tag.strip() for tag in self.tags):
            raise ValueError(f"`tags` must be a list of non-empty strings, got {self.tags!r}.")
        training_settings(self.training_args)

    def metrics(self) -> dict[str, float]:
        """The pruned model's metrics, without Trainer prefixes and runtime/throughput entries."""
        return _metrics(self.eval_results, "eval_results")

    def dense_metrics(self) -> dict[str, float]:
        """The same for the dense starting model."""
        return _metrics(self.dense_eval_results, "dense_eval_results")


def write_model_card(output_dir: str | Path, inputs: CardInputs | None = None, **kwargs: Any) -> Path:
    """Write `README.md` (and a `kept_per_layer.png` plot) into a folder written by `oto_hf.save_pruned`.

    The card has Hub metadata (`library_name: transformers`, `base_model`, tags `oto_hf` and `pruning`, datasets,
    `pipeline_tag` and a `model-index` with the evaluation results) and sections on the starting model, task and
    dataset, the OTO/DHSPG settings, the groups removed per kind and per layer, parameters and FLOPs before and after,
    the latency ratio, the evaluation results, how to load the folder, and how to cite OTO. An existing `README.md` is
    replaced. The plot needs matplotlib; without it a warning is logged and the card has no image.

    Args:
        output_dir (`str` or `Path`):
            A folder written by `save_pruned`, as `read_pruned_folder` checks it (config.json, weights, and a pruning
            record unless `model` has one).
        inputs (`CardInputs`, *optional*):
            What the card says beyond the folder; or pass its fields as keyword arguments.
        **kwargs:
            The fields of `CardInputs`: `model`, `base_model`, `task`, `dataset`, `dataset_description`,
            `model_name`, `training_args`, `eval_results`, `dense_eval_results`, `latency_ratio`, `metric_source`,
            `language`, `license`, `tags`.

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
    folder, inputs, config, record = _prepare(output_dir, inputs, kwargs)
    card = _render(folder, inputs, config, record, PLOT_NAME)  # fails before anything is written, if it fails
    if not _write_plot(record.layers, folder / PLOT_NAME):
        card = _render(folder, inputs, config, record, None)
    path = folder / "README.md"
    if path.exists():
        logger.info("Replacing the model card %s", path)
    card.save(path)
    logger.info("Wrote model card %s", path)
    return path


def build_model_card(
    output_dir: str | Path, inputs: CardInputs | None = None, *, plot_file: str | None = None, **kwargs: Any
) -> ModelCard:
    """Render the card of `write_model_card` without writing anything (e.g. for a dry run).

    Args:
        output_dir, inputs, **kwargs: as in `write_model_card`.
        plot_file (`str`, *optional*):
            File name of the kept-per-layer plot to show, relative to the card; `None` shows no image.

    Returns:
        `huggingface_hub.ModelCard`: the card (`card.data` holds the metadata, `str(card)` the text).
    """
    return _render(*_prepare(output_dir, inputs, kwargs), plot_file)


def template_path(name: str = TEMPLATE_NAME) -> Path:
    """Where the card template is: the `oto_hf.templates` package data (`model_cards/` of a source checkout)."""
    path = Path(str(importlib.resources.files(TEMPLATES_PACKAGE).joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(
            f"The model card template {name!r} is missing from {path.parent}. Reinstall oto-hf "
            "(`pip install --force-reinstall oto-hf`, or `pip install -e .` in a source checkout)."
        )
    return path


# ---- inputs ---------------------------------------------------------------------------------------------------------
def _prepare(
    output_dir: str | Path, inputs: CardInputs | None, kwargs: dict[str, Any]
) -> tuple[Path, CardInputs, dict[str, Any], PruningRecord]:
    """Check everything a card needs: the inputs, the folder, its config and the pruning record (the model's own when
    it has one, which a model reloaded from the folder has not, else the folder's)."""
    if inputs is None:
        inputs = CardInputs(**kwargs)
    elif kwargs:
        raise TypeError(f"Pass either `inputs` or keyword arguments, not both (got `inputs` and {sorted(kwargs)}).")
    elif not isinstance(inputs, CardInputs):
        raise TypeError(f"`inputs` must be a CardInputs, got {type(inputs).__name__}.")
    record = PruningRecord.from_model_or_config(inputs.model) if inputs.model is not None else None
    saved = read_pruned_folder(output_dir, require_record=record is None)
    return saved.path, inputs, saved.config, record or saved.record


def _metrics(results: Mapping[str, float] | None, argument: str) -> dict[str, float]:
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
        if not fmt.is_number(value):
            raise ValueError(f"`{argument}[{key!r}]` must be a finite number, got {value!r}.")
        metrics[name] = float(value)
    return metrics


# ---- rendering ------------------------------------------------------------------------------------------------------
def _render(
    folder: Path, inputs: CardInputs, config: dict[str, Any], record: PruningRecord, plot_file: str | None
) -> ModelCard:
    pruned_metrics, dense_metrics = inputs.metrics(), inputs.dense_metrics()
    architecture = fmt.stock_class_name(config)
    task = inputs.task or fmt.pipeline_tag(architecture)
    model_name = inputs.model_name or (
        f"{inputs.base_model.rsplit('/', 1)[-1]} pruned with OTO" if inputs.base_model else folder.resolve().name
    )
    results = fmt.model_index_results(pruned_metrics, task, inputs.dataset, inputs.metric_source)
    card_data = ModelCardData(
        base_model=inputs.base_model,
        datasets=[inputs.dataset] if inputs.dataset else None,
        eval_results=results or None,
        language=inputs.language,
        library_name="transformers",
        license=inputs.license,
        metrics=list(pruned_metrics) or None,
        model_name=model_name if results else None,  # `model-index` needs it; alone it is not Hub metadata
        pipeline_tag=task,
        tags=[*CARD_TAGS, *(tag for tag in inputs.tags or [] if tag not in CARD_TAGS)],
    )
    if inputs.training_args is not None:
        settings = training_settings(inputs.training_args)
        args_type = None if isinstance(inputs.training_args, Mapping) else type(inputs.training_args).__name__
        resolved = (record.training_settings or {}).get("dhspg_saliency")
        if settings.get("dhspg_saliency") == "auto" and resolved:
            settings["dhspg_saliency"] = resolved  # "auto" is chosen from the model; the record says what ran
    else:
        settings, args_type = training_settings(record.training_settings), None
    base_model, dataset = inputs.base_model, inputs.dataset
    return ModelCard.from_template(
        card_data,
        template_str=template_path().read_text(encoding="utf-8"),
        oto_hf_version=__version__,
        model_name=model_name,
        architecture=architecture,
        architecture_phrase=(
            f"version of [`{base_model}`](https://huggingface.co/{base_model})"
            if base_model
            else f"`{architecture}` model"
        ),
        base_model=base_model,
        base_model_type=config["model_type"].removeprefix("oto_"),
        task_text=f"`{task}`" if task else "not recorded",
        dataset_text=fmt.dataset_text(dataset, inputs.dataset_description),
        hyperparameters=[(name, fmt.format_setting(value)) for name, value in settings.items()],
        training_args_type=args_type,
        has_oto_settings=any(name in settings for name in OTO_SETTINGS),
        schedule=fmt.schedule_text(settings),
        removed_rows=fmt.removed_rows(record),
        layer_rows=fmt.layer_rows(record),
        plot_file=plot_file,
        params_before=fmt.count_text(record.params_before),
        params_after=fmt.count_text(record.params_after),
        params_ratio=fmt.ratio_text(record.params_after, record.params_before),
        params_change=fmt.change_phrase(record.params_after, record.params_before),
        flops_before=fmt.count_text(record.flops_before),
        flops_after=fmt.count_text(record.flops_after),
        flops_ratio=fmt.ratio_text(record.flops_after, record.flops_before),
        latency_text=fmt.latency_text(inputs.latency_ratio),
        latency_note=(
            "The latency ratio (pruned / starting model) was measured by the training run on the same inputs and "
            "hardware for both models (`oto_hf.report.compression_report`); it depends on that hardware and batch."
            if inputs.latency_ratio is not None
            else 'Latency was not measured (pass `latency_ratio=`, e.g. `compression_report(...)["latency_ratio"]`).'
        ),
        eval_rows=fmt.eval_rows(pruned_metrics, dense_metrics),
        has_dense=bool(dense_metrics),
        metric_source=inputs.metric_source,
        **fmt.load_instructions(folder, config, architecture),
    )


# ---- plot -----------------------------------------------------------------------------------------------------------
def _write_plot(layers: list[LayerWidths], path: Path) -> bool:
    """Write `kept_per_layer_figure(layers)` as PNG; False (with a warning) without matplotlib or widths."""
    try:
        figure = kept_per_layer_figure(layers)
    except ImportError:
        logger.warning("No kept-per-layer plot in the model card: matplotlib is missing (pip install matplotlib).")
        return False
    if figure is None:
        return False
    figure.savefig(path, format="png", metadata={"Software": None})
    return True


def kept_per_layer_figure(layers: list[LayerWidths]) -> Any:
    """A matplotlib `Figure` of kept and total groups per layer, one panel per kind (None without widths).

    The title sits above the panels and a single legend below them, so neither hides the other or a bar.
    """
    from matplotlib.figure import Figure

    kinds = [kind for kind in ALL_KINDS if any(layer.kind == kind for layer in layers)]
    if not kinds:
        return None
    width = min(12.0, max(4.0, 1.5 + 0.35 * max(sum(layer.kind == k for layer in layers) for k in kinds)))
    # Figure without pyplot: no global backend is chosen or changed; PNG output goes through Agg.
    figure = Figure(figsize=(width, 0.5 + 2.2 * len(kinds)), dpi=100, layout="constrained")
    axes = figure.subplots(len(kinds), 1, squeeze=False)[:, 0]
    for ax, kind in zip(axes, kinds):
        families = [layer for layer in layers if layer.kind == kind]
        positions = range(len(families))
        ax.bar(positions, [f.total for f in families], color="#d9d9d9", label="total")
        ax.bar(positions, [f.kept for f in families], color="#1f77b4", label="kept")
        labels = [str(f.layer) if f.layer is not None else (f.module or "model").rsplit(".", 1)[-1] for f in families]
        ax.set_xticks(list(positions), labels, fontsize=7, rotation=90 if len(families) > 16 else 0)
        ax.set_ylabel(fmt.KIND_NAMES[kind], fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    figure.suptitle("Groups kept per layer", fontsize=9)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    axes[-1].set_xlabel("layer", fontsize=8)
    return figure
