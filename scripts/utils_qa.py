"""SQuAD data for `run_squad.py`: reading local files, re-aligning answers, features for the model, post-processing.

Local files are SQuAD v1.1/v2.0 in one of two layouts:
- the official nested JSON: `{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
  "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}`;
- flat records, one per question, as JSON lines (or a JSON list, or `{"data": [...]}`): `{"id", "title"?,
  "context", "question", "answers": {"text": [...], "answer_start": [...]}}`.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers.utils import logging as hf_logging

logger = logging.getLogger(__name__)

QA_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": datasets.Sequence({"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}),
    }
)
FORMATS_HELP = (
    "Expected SQuAD JSON: the official nested layout {'data': [{'paragraphs': [{'context', 'qas': [{'id', "
    "'question', 'answers': [{'text', 'answer_start'}]}]}]}]}, or flat records (JSON lines, a JSON list, or "
    "{'data': [...]}) with 'id', 'context', 'question' and 'answers': {'text': [...], 'answer_start': [...]}."
)


# ---- reading ---------------------------------------------------------------------------------------------------


def read_squad_file(path: str | Path) -> list[dict[str, Any]]:
    """Flat records (`id`, `title`, `context`, `question`, `answers` as lists) from a local SQuAD file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"SQuAD file {str(path)!r} does not exist."
            + (" It is a directory; pass the JSON file inside it." if path.is_dir() else "")
        )
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise ValueError(f"SQuAD file {str(path)!r} is empty. {FORMATS_HELP}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as whole_error:
        data = _read_json_lines(path, text, whole_error)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    elif isinstance(data, dict) and {"id", "context", "question", "answers"} & set(data):
        data = [data]  # JSON lines with a single record
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(
            f"{str(path)!r} is JSON but not SQuAD data (top level: {type(data).__name__}). {FORMATS_HELP}"
        )
    if data and "paragraphs" in data[0]:
        records = list(_flatten_nested(path, data))
    else:
        records = [_flat_record(path, index, item) for index, item in enumerate(data)]
    if not records:
        raise ValueError(f"{str(path)!r} holds no questions. {FORMATS_HELP}")
    return records


def _read_json_lines(path: Path, text: str, whole_error: json.JSONDecodeError) -> list[Any]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            where = f"line {whole_error.lineno}: {whole_error.msg}" if number == 1 else f"line {number}: {error.msg}"
            raise ValueError(f"{str(path)!r} is neither JSON nor JSON lines ({where}). {FORMATS_HELP}") from None
    return rows


def _flatten_nested(path: Path, articles: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(article.get("paragraphs") or []):
            if "context" not in paragraph or "qas" not in paragraph:
                raise ValueError(f"{str(path)!r}: data[{a}].paragraphs[{p}] needs 'context' and 'qas'. {FORMATS_HELP}")
            for q, qa in enumerate(paragraph["qas"]):
                missing = [key for key in ("id", "question") if key not in qa]
                if missing:
                    raise ValueError(f"{str(path)!r}: data[{a}].paragraphs[{p}].qas[{q}] has no {missing}.")
                answers = [] if qa.get("is_impossible") else (qa.get("answers") or [])
                yield {
                    "id": str(qa["id"]),
                    "title": str(article.get("title") or ""),
                    "context": paragraph["context"],
                    "question": qa["question"],
                    "answers": _answer_lists(path, qa["id"], answers),
                }


def _flat_record(path: Path, index: int, item: dict[str, Any]) -> dict[str, Any]:
    missing = [key for key in ("id", "context", "question") if key not in item]
    if missing:
        raise ValueError(f"{str(path)!r}: record {index} has no {missing} (keys: {sorted(item)}). {FORMATS_HELP}")
    answers = [] if item.get("is_impossible") else item.get("answers", [])
    return {
        "id": str(item["id"]),
        "title": str(item.get("title") or ""),
        "context": item["context"],
        "question": item["question"],
        "answers": _answer_lists(path, item["id"], answers),
    }


def _answer_lists(path: Path, qid: Any, answers: Any) -> dict[str, list]:
    """`{"text": [...], "answer_start": [...]}` from either that form or a list of `{"text", "answer_start"}`."""
    if isinstance(answers, dict):
        texts, starts = list(answers.get("text") or []), list(answers.get("answer_start") or [])
    elif isinstance(answers, list) and all(isinstance(a, dict) and "text" in a for a in answers):
        texts, starts = [a["text"] for a in answers], [a.get("answer_start", -1) for a in answers]
    else:
        raise ValueError(
            f"{str(path)!r}: question {qid!r} has answers in an unknown form: {answers!r}. {FORMATS_HELP}"
        )
    if len(starts) != len(texts):
        starts = (starts + [-1] * len(texts))[: len(texts)]
    return {"text": [str(t) for t in texts], "answer_start": [int(s) if s is not None else -1 for s in starts]}


# ---- answer offsets --------------------------------------------------------------------------------------------


@dataclass
class AlignmentStats:
    answers: int = 0
    realigned: int = 0
    not_found: int = 0
    dropped_questions: int = 0
    unanswerable: int = 0


def align_answers(records: list[dict[str, Any]], for_training: bool) -> tuple[list[dict[str, Any]], AlignmentStats]:
    """Move each `answer_start` that does not point at its text to the nearest exact occurrence in the context.

    For training, answers whose text is nowhere in the context are dropped (they would teach wrong positions) and so
    are the questions left without one; evaluation keeps them, since EM/F1 only compare texts.
    """
    stats = AlignmentStats()
    kept = []
    for record in records:
        context, answers = record["context"], record["answers"]
        if not answers["text"]:
            stats.unanswerable += 1
            kept.append(record)
            continue
        texts, starts = [], []
        for text, start in zip(answers["text"], answers["answer_start"]):
            stats.answers += 1
            if text and start >= 0 and context[start : start + len(text)] == text:
                position = start
            else:
                position = _nearest_occurrence(context, text, start) if text else None
                if position is None:
                    stats.not_found += 1
                    if for_training:
                        continue
                    position = start
                else:
                    stats.realigned += 1
            texts.append(text)
            starts.append(position)
        if not texts:
            stats.dropped_questions += 1  # answerable, but no usable answer: neither a positive nor a null example
            continue
        kept.append({**record, "answers": {"text": texts, "answer_start": starts}})
    return kept, stats


def _nearest_occurrence(context: str, text: str, start: int) -> int | None:
    best = None
    position = context.find(text)
    while position != -1:
        if best is None or abs(position - start) < abs(best - start):
            best = position
        position = context.find(text, position + 1)
    return best


def to_dataset(records: list[dict[str, Any]]) -> datasets.Dataset:
    return datasets.Dataset.from_list(records, features=QA_FEATURES)


# ---- features --------------------------------------------------------------------------------------------------


def _tokenize(examples: dict[str, list], tokenizer, max_seq_length: int, doc_stride: int, pad: bool):
    """Question and context, the context split into overlapping windows of `max_seq_length` tokens."""
    pad_on_right = tokenizer.padding_side == "right"
    questions = [question.lstrip() for question in examples["question"]]  # leading spaces only waste tokens
    first, second = (questions, examples["context"]) if pad_on_right else (examples["context"], questions)
    return tokenizer(
        first,
        second,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if pad else False,
    ), (1 if pad_on_right else 0)


def prepare_train_features(
    examples: dict[str, list], tokenizer, max_seq_length: int, doc_stride: int, pad_to_max_length: bool = True
) -> dict[str, list]:
    """Tokenised windows with `start_positions`/`end_positions`; windows without the answer point at [CLS]."""
    encoded, context_index = _tokenize(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length)
    sample_map = encoded.pop("overflow_to_sample_mapping")
    offsets = encoded.pop("offset_mapping")
    encoded["start_positions"], encoded["end_positions"] = [], []
    for i, window in enumerate(offsets):
        ids = encoded["input_ids"][i]
        cls_index = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        answers = examples["answers"][sample_map[i]]
        start, end = cls_index, cls_index
        if answers["text"]:
            first_char = answers["answer_start"][0]
            last_char = first_char + len(answers["text"][0])
            sequence_ids = encoded.sequence_ids(i)
            context = [t for t, s in enumerate(sequence_ids) if s == context_index]
            if context and window[context[0]][0] <= first_char and window[context[-1]][1] >= last_char:
                # the last context token starting at or before the answer, the first ending at or after it
                start = max(t for t in context if window[t][0] <= first_char)
                end = min(t for t in context if window[t][1] >= last_char)
        encoded["start_positions"].append(start)
        encoded["end_positions"].append(end)
    return encoded


def prepare_validation_features(
    examples: dict[str, list], tokenizer, max_seq_length: int, doc_stride: int, pad_to_max_length: bool = True
) -> dict[str, list]:
    """Tokenised windows with `example_id`, and `offset_mapping` set to None outside the context."""
    encoded, context_index = _tokenize(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length)
    sample_map = encoded.pop("overflow_to_sample_mapping")
    encoded["example_id"] = []
    for i in range(len(encoded["input_ids"])):
        sequence_ids = encoded.sequence_ids(i)
        encoded["example_id"].append(examples["id"][sample_map[i]])
        offsets = encoded["offset_mapping"][i]
        encoded["offset_mapping"][i] = [o if sequence_ids[t] == context_index else None for t, o in enumerate(offsets)]
    return encoded


# ---- post-processing -------------------------------------------------------------------------------------------


@dataclass
class QAPredictions:
    """Answers per question id: text, the probability of "no answer" (v2), and the n best candidates."""

    texts: dict[str, str] = field(default_factory=dict)
    no_answer_probability: dict[str, float] = field(default_factory=dict)
    nbest: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def for_metric(self, version_2_with_negative: bool) -> list[dict[str, Any]]:
        """Predictions in the format of the `squad` / `squad_v2` metrics."""
        if version_2_with_negative:
            return [
                {"id": qid, "prediction_text": text, "no_answer_probability": self.no_answer_probability[qid]}
                for qid, text in self.texts.items()
            ]
        return [{"id": qid, "prediction_text": text} for qid, text in self.texts.items()]

    def save(self, output_dir: str | Path, prefix: str) -> None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        files = {"predictions": self.texts, "nbest_predictions": self.nbest}
        if self.no_answer_probability:
            files["null_odds"] = self.no_answer_probability
        for name, content in files.items():
            path = output_dir / f"{prefix}_{name}.json"
            path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def references(examples: datasets.Dataset) -> list[dict[str, Any]]:
    """Gold answers in the format of the `squad` / `squad_v2` metrics."""
    return [{"id": example["id"], "answers": example["answers"]} for example in examples]


def postprocess_qa_predictions(
    examples: datasets.Dataset,
    features: datasets.Dataset,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    version_2_with_negative: bool = False,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
    show_progress: bool = True,
) -> QAPredictions:
    """Turn start/end logits of every window into one answer text per question.

    For each window, the `n_best_size` best start and end tokens form candidate spans (inside the context, end not
    before start, at most `max_answer_length` tokens); a span scores start + end logit. The best span over all windows
    of a question is its answer. With `version_2_with_negative`, "no answer" ([CLS]) competes: its score is the lowest
    [CLS] score over the windows, and it wins when it beats the best span by more than `null_score_diff_threshold`.
    `no_answer_probability` is its softmax share among the n best candidates.
    """
    if len(start_logits) != len(features) or len(end_logits) != len(features):
        raise ValueError(
            f"Got {len(start_logits)} start and {len(end_logits)} end logit rows for {len(features)} features."
        )
    windows: dict[str, list[int]] = collections.defaultdict(list)
    for index, example_id in enumerate(features["example_id"]):
        windows[example_id].append(index)
    offsets_all = features["offset_mapping"]
    result = QAPredictions()
    progress = hf_logging.tqdm(
        examples, desc="Post-processing", total=len(examples), leave=False, disable=not show_progress
    )
    for example in progress:
        context = example["context"]
        candidates: list[dict[str, Any]] = []
        null_score = None
        for index in windows.get(example["id"], []):
            starts, ends, offsets = start_logits[index], end_logits[index], offsets_all[index]
            window_null = float(starts[0] + ends[0])
            null_score = window_null if null_score is None else min(null_score, window_null)
            top_starts = np.argsort(starts)[::-1][:n_best_size]
            top_ends = np.argsort(ends)[::-1][:n_best_size]
            for s in top_starts:
                if s >= len(offsets) or offsets[s] is None:
                    continue
                for e in top_ends:
                    if e >= len(offsets) or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    candidates.append(
                        {
                            "text": context[offsets[s][0] : offsets[e][1]],
                            "score": float(starts[s] + ends[e]),
                            "start_logit": float(starts[s]),
                            "end_logit": float(ends[e]),
                        }
                    )
        candidates = sorted(candidates, key=lambda c: c["score"], reverse=True)[:n_best_size]
        best = candidates[0] if candidates else None
        if version_2_with_negative and null_score is not None:
            candidates.append({"text": "", "score": null_score, "start_logit": None, "end_logit": None})
            candidates.sort(key=lambda c: c["score"], reverse=True)
        if candidates:
            scores = np.array([c["score"] for c in candidates])
            probabilities = np.exp(scores - scores.max())
            probabilities /= probabilities.sum()
            for candidate, probability in zip(candidates, probabilities):
                candidate["probability"] = float(probability)
        if version_2_with_negative:
            margin = null_score - best["score"] if best is not None and null_score is not None else None
            null_wins = best is None or (margin is not None and margin > null_score_diff_threshold)
            result.texts[example["id"]] = "" if null_wins else best["text"]
            result.no_answer_probability[example["id"]] = next(
                (c["probability"] for c in candidates if c["start_logit"] is None), 0.0
            )
        else:
            result.texts[example["id"]] = best["text"] if best is not None else ""
        result.nbest[example["id"]] = [{k: v for k, v in c.items() if k != "score"} for c in candidates]
    return result


def log_alignment(name: str, stats: AlignmentStats, for_training: bool) -> None:
    if stats.realigned:
        logger.info(
            "%s: re-aligned %d of %d answer_start offsets to the nearest exact occurrence of the answer.",
            name,
            stats.realigned,
            stats.answers,
        )
    if stats.not_found:
        what = "dropped (training needs positions)" if for_training else "kept for EM/F1 (they only compare texts)"
        logger.warning("%s: %d answers do not occur in their context; %s.", name, stats.not_found, what)
    if stats.dropped_questions:
        logger.warning("%s: %d questions lost every answer and were dropped.", name, stats.dropped_questions)
