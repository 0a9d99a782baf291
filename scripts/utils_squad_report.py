"""What `run_squad.py` reports beyond its own EM/F1: a dense baseline run's results (read, and checked to be on the
same questions) and the rows of the final summary."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from utils_common import compression_rows

if TYPE_CHECKING:
    from run_squad import ModelArguments

logger = logging.getLogger(__name__)


def load_baseline(path: str | None) -> dict[str, Any] | None:
    """The eval_results.json of an earlier dense run (see `--baseline_results`)."""
    if path is None:
        return None
    try:
        results = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--baseline_results {path!r} is not a readable eval_results.json ({error}).") from error
    if not isinstance(results, dict) or not isinstance(results.get("pruned"), dict):
        raise ValueError(
            f"--baseline_results {path!r} has no 'pruned' metrics: pass the eval_results.json that "
            "run_squad.py wrote for a dense run (--target_sparsity 0) with validation data."
        )
    return results


def check_baseline(baseline: dict[str, Any] | None, eval_data: str, eval_questions: int) -> None:
    """Warn when `--baseline_results` was evaluated on other questions than this run."""
    if baseline is None or (baseline.get("eval_data"), baseline.get("eval_questions")) == (eval_data, eval_questions):
        return
    logger.warning(
        "--baseline_results was evaluated on %s questions of %s, this run on %d of %s: the figures are not "
        "comparable.",
        baseline.get("eval_questions"),
        baseline.get("eval_data"),
        eval_questions,
        eval_data,
    )


def headline(metrics: dict[str, float] | None) -> tuple[float | None, float | None]:
    """(EM, F1) from a `squad` or `squad_v2` result."""
    if not metrics:
        return None, None
    return metrics.get("exact_match", metrics.get("exact")), metrics.get("f1")


def kept_widths(report: dict[str, Any], config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Kept and total heads and neurons over all layers.

    The report's per-layer totals count prunable groups only (heads protected by `min_heads_per_layer` are not
    groups), so totals come from the dense config where it names them.
    """
    kept: dict[str, list[int]] = {}
    for layer in report["kept_per_layer"]:
        entry = kept.setdefault(layer["kind"], [0, 0])
        entry[0] += layer["kept"]
        entry[1] += layer["total"]
    layers = config.get("num_hidden_layers") or config.get("n_layers")
    widths = {
        "head": config.get("num_attention_heads") or config.get("n_heads"),
        "neuron": config.get("intermediate_size") or config.get("hidden_dim"),
    }
    for kind, entry in kept.items():
        if layers and widths.get(kind):
            removed = entry[1] - entry[0]
            entry[1] = layers * widths[kind]
            entry[0] = entry[1] - removed
    return {kind: (a, b) for kind, (a, b) in kept.items()}


def summary_rows(
    results: dict[str, Any], model_args: ModelArguments, inputs: dict[str, torch.Tensor], seconds: float
) -> list[tuple[str, str]]:
    """The rows of the final printout: data, EM/F1 before and after, groups, compression, where it all went."""
    evals, report = results["eval_results"], results["report"]

    def pair(metrics: dict[str, float] | None) -> str:
        em, f1 = headline(metrics)
        return "not measured" if em is None else f"EM {em:5.2f}  F1 {f1:5.2f}"

    kept = kept_widths(report, results["dense_config"])
    protected = results["protected_heads"]
    output_dir = Path(results["output_dir"])
    return [
        ("model", model_args.model_name_or_path),
        (
            "training",
            f"{evals['train_data']}: {evals['train_windows']:,} windows of {evals['train_questions']:,} sampled "
            "questions",
        ),
        (
            "evaluation",
            f"{evals['eval_data']}: {evals['eval_questions']:,} questions, {evals['eval_windows']:,} windows",
        ),
        ("metric", f"{evals['metric']} from {evals['metric_source']}"),
        (
            "dense",
            pair(evals["dense"])
            + (" (fresh QA head, before training)" if evals["fresh_qa_head"] else " (before OTO training)"),
        ),
        *(
            [("baseline", f"{pair(evals['baseline'])} (dense, fine-tuned: {evals['baseline_results']})")]
            if evals.get("baseline")
            else []
        ),
        (
            ("pruned", pair(evals["pruned"]))
            if report["groups_zero"]
            else ("trained", f"{pair(evals['pruned'])} (no group zero: nothing pruned)")
        ),
        (
            "groups",
            f"{report['groups_zero']} of {report['groups_total']} zero (target {report['target_sparsity']} of "
            f"{report['sparsity_budget']}); kept "
            + ", ".join(f"{k}s {a:,}/{b:,}" for k, (a, b) in kept.items())
            + (f" (min_heads_per_layer={protected}: the largest kept in each layer)" if protected else ""),
        ),
        *compression_rows(report, inputs),
        ("saved to", results["pruned_dir"] + (" (with README.md model card)" if results.get("model_card") else "")),
        ("reports", f"{output_dir / 'eval_results.json'}, {output_dir / 'compression_report.json'}"),
        ("wall time", f"{seconds / 60:.1f} min"),
    ]
