"""F1 as an `evaluate` metric module, computed with numpy (an offline copy of the Hub's `f1`).

Load it with `evaluate.load("<path to this folder>")` or `metrics.load_metric("f1")` (from `scripts/`). Inputs and
outputs match the Hub module:
`compute(predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None)` returns
`{"f1": float}`, or one score per label with `average=None`. The `"multilabel"` configuration takes one 0/1 row per
example. Undefined scores (no true or predicted example of a label) count as 0.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

AVERAGES = ("binary", "micro", "macro", "weighted", "samples", None)

_DESCRIPTION = """
F1: the harmonic mean of precision and recall, 2 * TP / (2 * TP + FP + FN), between 0 and 1. For several labels,
`average` chooses how the per-label scores combine: `"binary"` (the `pos_label` only), `"micro"` (pooled counts),
`"macro"` (plain mean), `"weighted"` (mean weighted by each label's number of references), `"samples"` (mean over
examples, multilabel only) or `None` (one score per label).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels; in the `"multilabel"` configuration, one list of 0/1 per example.
    references (`list` of `int`): reference labels, in the same form as `predictions`.
    labels (`list` of `int`, *optional*): the labels to score (and their order with `average=None`); defaults to every
        label seen in `predictions` or `references` (every column in the multilabel case).
    pos_label (`int`, *optional*, defaults to 1): the positive label when `average="binary"`.
    average (`str` or `None`, *optional*, defaults to `"binary"`): one of "binary", "micro", "macro", "weighted",
        "samples" or `None`.
    sample_weight (`list` of `float`, *optional*): one weight per example.

Returns:
    `dict`: `{"f1": float}`, or `{"f1": numpy.ndarray}` (one score per label) with `average=None`.

Example:
    >>> f1 = evaluate.load("scripts/metrics/f1")
    >>> f1.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'f1': 0.6666666666666666}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise division with 0 where the denominator is 0 (an undefined F1 counts as 0)."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def f1_score(
    references,
    predictions,
    labels=None,
    pos_label: int = 1,
    average: str | None = "binary",
    sample_weight=None,
) -> float | np.ndarray:
    """F1 of `predictions` against `references` (1-D labels, or 2-D 0/1 rows for multilabel data)."""
    if average not in AVERAGES:
        raise ValueError(f"`average` must be one of {list(AVERAGES)}, got {average!r}.")
    y_true, y_pred = np.asarray(references), np.asarray(predictions)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"`predictions` and `references` must have the same shape, got {y_pred.shape} and {y_true.shape}."
        )
    weights = np.ones(len(y_true)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if weights.shape != (len(y_true),):
        raise ValueError(f"`sample_weight` needs one weight per example ({len(y_true)}), got shape {weights.shape}.")
    multilabel = y_true.ndim == 2
    if multilabel:
        if average == "binary":
            raise ValueError("The references are multilabel, so `average='binary'` does not apply; choose another.")
        columns = np.arange(y_true.shape[1]) if labels is None else np.asarray(labels)
        true_hits, pred_hits = y_true[:, columns] != 0, y_pred[:, columns] != 0
    else:
        if average == "samples":
            raise ValueError("`average='samples'` applies only to multilabel references.")
        present = np.union1d(y_true, y_pred)
        if average == "binary":
            if len(present) > 2:
                raise ValueError(
                    f"The references have {len(present)} labels ({present.tolist()}), so `average='binary'` does not "
                    "apply; choose 'micro', 'macro', 'weighted' or None."
                )
            if len(present) == 2 and pos_label not in present:
                raise ValueError(
                    f"`pos_label={pos_label}` is not a valid label; it should be one of {present.tolist()}."
                )
            columns = np.asarray([pos_label])
        else:
            columns = present if labels is None else np.asarray(labels)
        true_hits, pred_hits = y_true[:, None] == columns[None, :], y_pred[:, None] == columns[None, :]
    if average == "samples":
        tp = (true_hits & pred_hits).sum(axis=1)
        per_example = _ratio(2 * tp, true_hits.sum(axis=1) + pred_hits.sum(axis=1))
        return float(np.average(per_example, weights=weights)) if weights.sum() else 0.0
    w = weights[:, None]
    tp = ((true_hits & pred_hits) * w).sum(axis=0)
    fp = ((~true_hits & pred_hits) * w).sum(axis=0)
    fn = ((true_hits & ~pred_hits) * w).sum(axis=0)
    if average == "micro":
        return float(_ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()))
    per_label = _ratio(2 * tp, 2 * tp + fp + fn)
    if average is None:
        return per_label
    if average == "weighted":
        support = tp + fn
        return float(np.average(per_label, weights=support)) if support.sum() else 0.0
    return float(per_label.mean()) if len(per_label) else 0.0  # "macro", or "binary" (a single label)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        label = datasets.Value("int32")
        if self.config_name == "multilabel":
            label = datasets.Sequence(label)
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": label, "references": label}),
            reference_urls=["https://en.wikipedia.org/wiki/F-score"],
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None):
        score = f1_score(
            references, predictions, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
        )
        if isinstance(score, np.ndarray) and score.size != 1:
            return {"f1": score}  # one score per label (`average=None`)
        return {"f1": float(np.asarray(score).ravel()[0])}
