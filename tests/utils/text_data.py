"""Tiny text classification data written to disk for the text scripts: CSV files of generated sentences."""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from tests.utils.tokenizers import CORPUS


def text_rows(count: int, seed: int, labels: tuple[str, ...] = ("neg", "pos")) -> list[tuple[str, str]]:
    """Shuffled words of one corpus sentence per label; the label is which sentence."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.randrange(len(labels))
        words = CORPUS[label].split()
        rng.shuffle(words)
        rows.append((" ".join(words), labels[label]))
    return rows


def write_csv(path: Path, rows: Iterable[Sequence[str]], header: Sequence[str] | None = ("sentence", "label")) -> Path:
    """`rows` as a CSV file, after `header` unless it is None."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path
