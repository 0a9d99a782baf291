"""SQuAD v2.0 exact match and F1 with unanswerable questions, as an `evaluate` metric (an offline copy).

Same inputs and outputs as the Hub's `squad_v2` metric; scoring follows the official SQuAD v2.0 evaluation:
- answers are normalised (lower case, punctuation removed, articles a/an/the removed, whitespace collapsed);
- a question whose gold answers are all empty after normalisation is unanswerable: its only gold answer is "";
- exact match and F1 take the best gold answer; F1 is 1 when both token lists are empty and 0 when only one is;
- a prediction whose `no_answer_probability` is above `no_answer_threshold` counts as predicting "no answer";
- scores are in percent, overall and split into questions with answers (`HasAns_*`) and without (`NoAns_*`);
  `best_exact`/`best_f1` are the scores at the best no-answer probability threshold (`best_*_thresh`).
"""

from __future__ import annotations

import re
import string
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = """Exact match and F1 on SQuAD v2.0, where some questions have no answer in the context."""

_CITATION = """@inproceedings{rajpurkar-etal-2018-know,
    title = "Know What You Don{'}t Know: Unanswerable Questions for {SQ}u{AD}",
    author = "Rajpurkar, Pranav and Jia, Robin and Liang, Percy",
    booktitle = "Proceedings of the 56th Annual Meeting of the Association for Computational Linguistics",
    year = "2018",
    pages = "784--789",
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of `{"id": str, "prediction_text": str, "no_answer_probability": float}`; an empty
        `prediction_text` predicts "no answer".
    references: list of `{"id": str, "answers": {"text": list[str], "answer_start": list[int]}}`; empty lists for an
        unanswerable question.
    no_answer_threshold (`float`, defaults to 1.0): a prediction with `no_answer_probability` above it counts as "".
Returns:
    `exact`, `f1`, `total`; `HasAns_exact`, `HasAns_f1`, `HasAns_total` (if any question has an answer);
    `NoAns_exact`, `NoAns_f1`, `NoAns_total` (if any has none); `best_exact`, `best_exact_thresh`, `best_f1`,
    `best_f1_thresh`. Scores are in percent.
Example:
    >>> squad_v2 = evaluate.load("scripts/metrics/squad_v2")
    >>> squad_v2.compute(predictions=[{"id": "q1", "prediction_text": "", "no_answer_probability": 0.0}],
    ...                  references=[{"id": "q1", "answers": {"text": [], "answer_start": []}}])["exact"]
    100.0
"""

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (official SQuAD order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 after normalisation; with an empty side, 1 if both are empty, else 0."""
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)


def _mean(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0


def _best_threshold(
    raw: dict[str, float], no_answer_prob: dict[str, float], has_answer: dict[str, bool], answered: dict[str, bool]
) -> tuple[float, float]:
    """Best score (percent) over thresholds t, where questions with probability > t are answered "no answer".

    At t below every probability all questions abstain: the unanswerable ones score 1. Raising t past a question's
    probability lets its prediction through: it then scores its raw score (answerable), or 0 instead of 1 if it
    gave a non-empty answer to an unanswerable question.
    """
    score = float(sum(not has for has in has_answer.values()))
    best, best_threshold = score, 0.0
    for qid in sorted(raw, key=lambda q: no_answer_prob[q]):
        if has_answer[qid]:
            score += raw[qid]
        elif answered[qid]:
            score -= 1.0
        if score > best:
            best, best_threshold = score, no_answer_prob[qid]
    return 100.0 * best / max(len(raw), 1), best_threshold


def squad_v2_scores(
    predictions: dict[str, str],
    no_answer_prob: dict[str, float],
    references: dict[str, list[str]],
    no_answer_threshold: float = 1.0,
) -> dict[str, float]:
    """The `squad_v2` outputs from id -> predicted text, id -> no-answer probability and id -> gold texts."""
    raw_exact: dict[str, float] = {}
    raw_f1: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    for qid, texts in references.items():
        golds = [text for text in texts if normalize_answer(text)] or [""]
        has_answer[qid] = golds != [""]
        if qid not in predictions:
            continue  # the official script skips unanswered ids
        prediction = predictions[qid]
        raw_exact[qid] = max(exact_score(prediction, gold) for gold in golds)
        raw_f1[qid] = max(f1_score(prediction, gold) for gold in golds)
    abstains = {qid: no_answer_prob.get(qid, 0.0) > no_answer_threshold for qid in raw_exact}
    exact = {q: float(not has_answer[q]) if abstains[q] else s for q, s in raw_exact.items()}
    f1 = {q: float(not has_answer[q]) if abstains[q] else s for q, s in raw_f1.items()}

    result: dict[str, float] = {
        "exact": _mean(list(exact.values())),
        "f1": _mean(list(f1.values())),
        "total": len(exact),
    }
    for name, wanted in (("HasAns", True), ("NoAns", False)):
        ids = [q for q in exact if has_answer[q] is wanted]
        if ids:
            result[f"{name}_exact"] = _mean([exact[q] for q in ids])
            result[f"{name}_f1"] = _mean([f1[q] for q in ids])
            result[f"{name}_total"] = len(ids)
    probabilities = {q: no_answer_prob.get(q, 0.0) for q in raw_exact}
    answered = {q: bool(predictions[q]) for q in raw_exact}
    scored = {q: has_answer[q] for q in raw_exact}
    result["best_exact"], result["best_exact_thresh"] = _best_threshold(raw_exact, probabilities, scored, answered)
    result["best_f1"], result["best_f1_thresh"] = _best_threshold(raw_f1, probabilities, scored, answered)
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SquadV2(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {
                        "id": datasets.Value("string"),
                        "prediction_text": datasets.Value("string"),
                        "no_answer_probability": datasets.Value("float32"),
                    },
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

    def _compute(self, predictions, references, no_answer_threshold: float = 1.0) -> dict[str, float]:
        predicted = {p["id"]: p["prediction_text"] for p in predictions}
        probabilities = {p["id"]: p["no_answer_probability"] for p in predictions}
        golds = {r["id"]: list(r["answers"]["text"]) for r in references}
        return squad_v2_scores(predicted, probabilities, golds, no_answer_threshold)
