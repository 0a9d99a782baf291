"""Tiny in-memory datasets."""

from __future__ import annotations

import torch


class TinyClassification(torch.utils.data.Dataset):
    """Token sequences whose label is whether the first token is in the upper half of the vocabulary."""

    def __init__(self, size: int = 64, length: int = 12, vocab: int = 99, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(5, vocab, (size, length), generator=generator)
        self.labels = (self.input_ids[:, 0] > vocab // 2).long()

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}
