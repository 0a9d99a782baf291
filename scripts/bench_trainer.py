"""A short OTOTrainer run on BERT-base shapes (random weights, synthetic data) against Trainer, then save and reload.

After an untimed warm-up run, trains the same model on the same batches with `Trainer` (AdamW) and with `OTOTrainer`
(DHSPG, half the FLOPs), one after the other, and prints each run's training time, their ratio, the pruned model's size
and whether the saved folder reloads with the same outputs. bf16 on CUDA. Runs under `accelerate launch` too (e.g.
FSDP2 on 2 GPUs: see the README's multi-GPU section); the figures then come from the main process.

    python scripts/bench_trainer.py                      # BERT-base shapes, 60 steps
    python scripts/bench_trainer.py --layers 2 --steps 20  # a quicker look on a CPU
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from oto_hf import OTOTrainer, OTOTrainingArguments, save_pruned


class RandomTokens(Dataset):
    """Fixed random token ids with random labels (the same for both runs)."""

    def __init__(self, size: int, seq_len: int, vocab: int = 30522) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1000, vocab, (size, seq_len), generator=generator)
        self.labels = torch.randint(0, 2, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12, help="BERT layers (12: BERT-base).")
    parser.add_argument("--steps", type=int, default=60, help="Optimizer steps of each run.")
    parser.add_argument("--batch_size", type=int, default=16, help="Per-device batch size.")
    parser.add_argument("--seq_len", type=int, default=128, help="Sequence length.")
    parser.add_argument("--target", type=float, default=0.5, help="Fraction of the FLOPs to remove.")
    return parser


def main(args: argparse.Namespace) -> dict[str, float]:
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=args.layers, num_labels=2)
    dense = BertForSequenceClassification(config)
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    data = RandomTokens(args.steps * args.batch_size, args.seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(
            max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=3e-5, report_to=[],
            save_strategy="no", logging_steps=max(1, args.steps // 5), bf16=cuda, use_cpu=not cuda, seed=0,
            disable_tqdm=True,
        )  # fmt: skip
        # An untimed first run pays the one-off costs (kernels, allocator, thread pools) for both.
        warm = BertForSequenceClassification(config)
        Trainer(warm, TrainingArguments(f"{tmp}/warm", **{**common, "max_steps": 3}), train_dataset=data).train()
        baseline = Trainer(dense, TrainingArguments(f"{tmp}/dense", **common), train_dataset=data)
        dense_seconds = baseline.train().metrics["train_runtime"]

        model = BertForSequenceClassification(config)
        model.load_state_dict(state)
        oto_args = OTOTrainingArguments(f"{tmp}/oto", **common, target_sparsity=args.target, pruning_end_ratio=0.6)
        trainer = OTOTrainer(model, oto_args, train_dataset=data)
        oto_seconds = trainer.train().metrics["train_runtime"]
        pruned = trainer.pruned_model()  # kept to compare with its reload
        if not trainer.is_world_process_zero():
            return {}
        save_pruned(pruned, Path(tmp) / "pruned")
        record = pruned.oto_pruning
        reloaded = AutoModelForSequenceClassification.from_pretrained(Path(tmp) / "pruned").to(pruned.device).eval()
        ids = data[0]["input_ids"][None].to(pruned.device)
        with torch.no_grad():
            difference = (reloaded(input_ids=ids).logits.float() - pruned.eval()(input_ids=ids).logits.float()).abs()
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"BERT shapes, {args.layers} layers, {args.steps} steps of batch {args.batch_size} x {args.seq_len} on "
          f"{device}{' (bf16)' if cuda else ''}")  # fmt: skip
    print(f"Trainer (AdamW):    {dense_seconds:8.1f} s")
    print(f"OTOTrainer (DHSPG): {oto_seconds:8.1f} s   ratio {oto_seconds / dense_seconds:.3f}x")
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    print(f"pruned: params {record.params_after / record.params_before:.3f} of dense, FLOPs "
          f"{record.flops_after / record.flops_before:.3f}; forced zero groups: {optimizer.num_forced_zero_groups}; "
          f"reload max |diff| {float(difference.max()):.2e}")  # fmt: skip
    return {"ratio": oto_seconds / dense_seconds, "flops_kept": record.flops_after / record.flops_before}


if __name__ == "__main__":
    main(make_parser().parse_args())
