"""Tiny SQuAD-format data, written to files in the official nested layout or as flat JSON lines.

Contexts use the words of `tests/utils/tokenizers.CORPUS`, so the tiny WordPiece tokenizer knows them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tests.utils.tokenizers import CORPUS

QUESTIONS = ["what sat on the mat", "where did the dog run", "what removes heads", "what gives a smaller model"]


def qa_records(
    count: int = 16, seed: int = 0, unanswerable: int = 0, misaligned: int = 1, long_contexts: int = 1
) -> list[dict[str, Any]]:
    """Flat SQuAD records (`id`, `title`, `context`, `question`, `answers` as lists).

    The answer is one word of the context. The first `misaligned` records point `answer_start` a few characters off
    (as ~1,000 SQuADShifts answers do); the next `long_contexts` repeat their context so that it needs several
    windows; the last `unanswerable` records have no answer (SQuAD v2).
    """
    rng = random.Random(seed)
    records = []
    for index in range(count):
        sentences = rng.sample(CORPUS, k=3)
        context = ". ".join(sentences) + "."
        if misaligned <= index < misaligned + long_contexts:
            context = " ".join([context] * 6)
        words = sentences[1].split()
        position = rng.choice([k for k, w in enumerate(words) if len(w) > 2 and w != "the"])
        answer = words[position]
        start = context.index(sentences[1]) + sum(len(w) + 1 for w in words[:position])
        answers = {"text": [answer], "answer_start": [start + (3 if index < misaligned else 0)]}
        if index >= count - unanswerable:
            answers = {"text": [], "answer_start": []}
        records.append(
            {
                "id": f"q{seed}-{index}",
                "title": f"doc{index % 3}",
                "context": context,
                "question": rng.choice(QUESTIONS),
                "answers": answers,
            }
        )
    return records


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_nested(path: str | Path, records: list[dict[str, Any]], version: str = "1.1") -> Path:
    """The official layout: articles by title, one paragraph per record, `is_impossible` on unanswerable ones."""
    articles: dict[str, list] = {}
    for record in records:
        answers = [
            {"text": t, "answer_start": s}
            for t, s in zip(record["answers"]["text"], record["answers"]["answer_start"])
        ]
        qa = {"id": record["id"], "question": record["question"], "answers": answers}
        if version.startswith("2"):
            qa["is_impossible"] = not answers
        articles.setdefault(record["title"], []).append({"context": record["context"], "qas": [qa]})
    data = {"version": version, "data": [{"title": t, "paragraphs": p} for t, p in articles.items()]}
    path = Path(path)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
