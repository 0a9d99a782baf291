"""Accuracy as an `evaluate` metric module, computed with numpy (an offline copy of the Hub's `accuracy`).

Load it with `evaluate.load("<path to this folder>")` or `metrics.load_metric("accuracy")` (from `scripts/`).
Inputs and outputs match the Hub module: `compute(predictions, references, normalize=True, sample_weight=None)` returns
`{"accuracy": float}`; the `"multilabel"` configuration takes one 0/1 row per example and counts a row as correct
only when every entry matches.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy: the share of examples whose predicted label equals the reference label, between 0 and 1 (or, with
`normalize=False`, the number of such examples). With `sample_weight`, each example counts with its weight.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels; in the `"multilabel"` configuration, one list of 0/1 per example.
    references (`list` of `int`): reference labels, in the same form as `predictions`.
    normalize (`bool`, *optional*, defaults to `True`): return the fraction of correct examples; `False` returns
        their (weighted) count.
    sample_weight (`list` of `float`, *optional*): one weight per example.

Returns:
    `dict`: `{"accuracy": float}`.

Example:
    >>> accuracy = evaluate.load("scripts/metrics/accuracy")
    >>> accuracy.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'accuracy': 0.75}
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


def accuracy_score(
    references: np.ndarray, predictions: np.ndarray, normalize: bool = True, sample_weight: np.ndarray | None = None
) -> float:
    """(Weighted) fraction or count of examples whose prediction equals the reference (whole rows when 2-D)."""
    references, predictions = np.asarray(references), np.asarray(predictions)
    if references.shape != predictions.shape:
        raise ValueError(
            f"`predictions` and `references` must have the same shape, got {predictions.shape} and {references.shape}."
        )
    correct = references == predictions
    if correct.ndim > 1:
        correct = correct.reshape(len(correct), -1).all(axis=1)
    weights = np.ones(len(correct)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if weights.shape != correct.shape:
        raise ValueError(f"`sample_weight` needs one weight per example ({len(correct)}), got shape {weights.shape}.")
    total = float(np.dot(correct.astype(np.float64), weights))
    if not normalize:
        return total
    return total / float(weights.sum()) if weights.sum() else 0.0


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        label = datasets.Value("int32")
        if self.config_name == "multilabel":
            label = datasets.Sequence(label)
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": label, "references": label}),
            reference_urls=["https://en.wikipedia.org/wiki/Accuracy_and_precision"],
        )

    def _compute(self, predictions, references, normalize: bool = True, sample_weight=None) -> dict[str, float]:
        return {"accuracy": float(accuracy_score(references, predictions, normalize, sample_weight))}
