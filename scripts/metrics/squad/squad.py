"""SQuAD v1.1 exact match and F1, as an `evaluate` metric (an offline copy of the Hub's `squad`).

Same inputs and outputs as the Hub's `squad` metric; scoring follows the official SQuAD v1.1 evaluation: answers are
normalised (lower case, punctuation removed, articles a/an/the removed, whitespace collapsed); a prediction scores the
best exact match and the best token-level F1 over the question's gold answers; both are averaged over the references
and reported in percent. A reference without a prediction scores 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = """Exact match and F1 of extractive answers against the SQuAD v1.1 gold answers (official scoring)."""

_CITATION = """@inproceedings{rajpurkar-etal-2016-squad,
    title = "{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text",
    author = "Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy",
    booktitle = "Proceedings of the 2016 Conference on Empirical Methods in Natural Language Processing",
    year = "2016",
    pages = "2383--2392",
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of `{"id": str, "prediction_text": str}`.
    references: list of `{"id": str, "answers": {"text": list[str], "answer_start": list[int]}}`.
Returns:
    `{"exact_match": float, "f1": float}`, both in percent (0-100).
Example:
    >>> squad = evaluate.load("scripts/metrics/squad")
    >>> squad.compute(predictions=[{"id": "q1", "prediction_text": "the Eiffel Tower"}],
    ...               references=[{"id": "q1", "answers": {"text": ["Eiffel Tower"], "answer_start": [0]}}])
    {'exact_match': 100.0, 'f1': 100.0}
"""

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (official SQuAD order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (0 when no token is shared)."""
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(gold).split()
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """`{"exact_match", "f1"}` in percent over `references` (id -> gold texts), given id -> predicted text."""
    exact = f1 = 0.0
    for qid, golds in references.items():
        if qid not in predictions or not golds:
            continue  # unanswered: scores 0 but still counts in the total
        prediction = predictions[qid]
        exact += max(exact_match_score(prediction, gold) for gold in golds)
        f1 += max(f1_score(prediction, gold) for gold in golds)
    total = max(len(references), 1)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Squad(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                    "references": {
                        "id": datasets.Value("string"),
                        "answers": datasets.Sequence(
                            {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
                        ),
                    },
                }
            ),
            homepage="https://rajpurkar.github.io/SQuAD-explorer/",
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        predicted = {p["id"]: p["prediction_text"] for p in predictions}
        golds = {r["id"]: list(r["answers"]["text"]) for r in references}
        return squad_scores(predicted, golds)
