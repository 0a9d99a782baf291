"""A tiny OTOTrainer run, importable by tests and runnable under torchrun (`python -m tests.utils.train_tiny OUT`)."""

from __future__ import annotations

import sys

import torch
from transformers import BertConfig, BertForSequenceClassification

from oto_hf import OTOTrainer, OTOTrainingArguments
from tests.utils.data import TinyClassification
from tests.utils.tiny_models import TEXT


def tiny_model(seed: int = 0, dropout: float = 0.1) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(**TEXT, num_labels=2, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(config)


def tiny_args(output_dir: str, **overrides) -> OTOTrainingArguments:
    values = dict(
        max_steps=24,
        per_device_train_batch_size=8,
        learning_rate=2e-3,
        target_sparsity=0.3,
        sparsity_budget="groups",
        partition_steps=4,
        pruning_end_steps=14,
        logging_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    return OTOTrainingArguments(output_dir, **values)


def main(output_dir: str, per_device_batch: int, distillation: str = "off") -> None:
    """One global batch of 8 examples per step: 1 x 8 or 2 processes x 4 see the same data at every step."""
    model = tiny_model(dropout=0.0)  # dropout masks would depend on how the batch is split
    args = tiny_args(output_dir, per_device_train_batch_size=per_device_batch, distillation=distillation)
    trainer = OTOTrainer(model, args, train_dataset=TinyClassification(size=8))
    trainer.train()
    rank = trainer.args.process_index
    torch.save(
        {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()},
        f"{output_dir}/weights-rank{rank}.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4])
