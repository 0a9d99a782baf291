"""The local copies of the accuracy and F1 `evaluate` modules (scripts/metrics), against hand-computed cases."""

import evaluate
import numpy as np
import pytest

from metrics import load_metric, local_metric_path


@pytest.fixture(scope="module")
def accuracy():
    module, source = load_metric("accuracy", prefer_local=True)
    assert source.endswith("(local copy)")
    return module


@pytest.fixture(scope="module")
def f1():
    module, source = load_metric("f1", prefer_local=True)
    assert source.endswith("(local copy)")
    return module


PREDICTIONS, REFERENCES = [0, 1, 1, 0], [0, 1, 0, 0]
# refs 0 1 2 0 1 2 / preds 0 2 1 0 0 1: class 0 has tp 2, fp 1, fn 0 (F1 0.8); classes 1 and 2 have tp 0 (F1 0).
MC_REFERENCES, MC_PREDICTIONS = [0, 1, 2, 0, 1, 2], [0, 2, 1, 0, 0, 1]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, 0.75),
        ({"normalize": False}, 3.0),
        ({"sample_weight": [1, 2, 3, 4]}, (1 + 2 + 4) / 10),
        ({"normalize": False, "sample_weight": [1, 2, 3, 4]}, 7.0),
    ],
)
def test_accuracy(accuracy, kwargs, expected):
    result = accuracy.compute(predictions=PREDICTIONS, references=REFERENCES, **kwargs)
    assert result == {"accuracy": pytest.approx(expected)} and isinstance(result["accuracy"], float)


def test_accuracy_multiclass_and_multilabel(accuracy):
    assert accuracy.compute(predictions=MC_PREDICTIONS, references=MC_REFERENCES)["accuracy"] == pytest.approx(2 / 6)
    multilabel = evaluate.load(str(local_metric_path("accuracy")), "multilabel")
    result = multilabel.compute(predictions=[[0, 1], [1, 1]], references=[[0, 1], [1, 0]])  # whole rows must match
    assert result == {"accuracy": 0.5}


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, 2 / 3),  # tp 1, fp 1, fn 0
        ({"pos_label": 0}, 4 / 5),  # tp 2, fp 0, fn 1
        ({"sample_weight": [1, 1, 2, 1]}, 2 / 4),  # tp 1, fp 2, fn 0
        ({"average": "macro"}, (4 / 5 + 2 / 3) / 2),
        ({"average": "micro"}, 0.75),
    ],
)
def test_f1_binary(f1, kwargs, expected):
    result = f1.compute(predictions=PREDICTIONS, references=REFERENCES, **kwargs)
    assert result == {"f1": pytest.approx(expected)} and isinstance(result["f1"], float)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"average": "macro"}, 0.8 / 3),
        ({"average": "micro"}, 1 / 3),  # pooled: tp 2, fp 4, fn 4
        ({"average": "weighted"}, 0.8 / 3),  # equal supports
        ({"average": "macro", "labels": [0, 1]}, 0.4),
    ],
)
def test_f1_multiclass(f1, kwargs, expected):
    assert f1.compute(predictions=MC_PREDICTIONS, references=MC_REFERENCES, **kwargs)["f1"] == pytest.approx(expected)


def test_f1_per_label_weighted_and_undefined(f1):
    per_label = f1.compute(predictions=MC_PREDICTIONS, references=MC_REFERENCES, average=None)["f1"]
    np.testing.assert_allclose(per_label, [0.8, 0.0, 0.0])
    # class 0: tp 2, fn 1 -> 0.8 (support 3); class 1: tp 1, fp 1 -> 2/3 (support 1)
    weighted = f1.compute(predictions=[0, 0, 1, 1], references=[0, 0, 0, 1], average="weighted")["f1"]
    assert weighted == pytest.approx((3 * 0.8 + 2 / 3) / 4)
    assert f1.compute(predictions=[0, 0], references=[0, 0]) == {"f1": 0.0}  # no positive at all: 0, not NaN


def test_f1_multilabel():
    multilabel = evaluate.load(str(local_metric_path("f1")), "multilabel")
    predictions, references = [[0, 1], [1, 1]], [[0, 1], [1, 0]]
    # label 0: tp 1 -> 1; label 1: tp 1, fp 1 -> 2/3; rows: 1 and 2/3
    assert multilabel.compute(predictions=predictions, references=references, average="macro")["f1"] == pytest.approx(
        (1 + 2 / 3) / 2
    )
    assert multilabel.compute(predictions=predictions, references=references, average="micro")["f1"] == pytest.approx(
        4 / 5
    )
    assert multilabel.compute(predictions=predictions, references=references, average="samples")[
        "f1"
    ] == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="multilabel"):
        multilabel.compute(predictions=predictions, references=references)


@pytest.mark.parametrize(
    "kwargs, predictions, references, message",
    [
        ({}, MC_PREDICTIONS, MC_REFERENCES, "average='binary'` does not apply"),
        ({"pos_label": 1}, [0, 2], [0, 2], r"`pos_label=1` is not a valid label"),
        ({"average": "mean"}, PREDICTIONS, REFERENCES, "`average` must be one of"),
        ({"average": "samples"}, PREDICTIONS, REFERENCES, "only to multilabel"),
    ],
)
def test_f1_errors(f1, kwargs, predictions, references, message):
    with pytest.raises(ValueError, match=message):
        f1.compute(predictions=predictions, references=references, **kwargs)


def test_local_modules_need_no_sklearn():
    for name in ("accuracy", "f1"):
        source = (local_metric_path(name) / f"{name}.py").read_text(encoding="utf-8")
        assert "sklearn" not in source.replace("scikit-learn", "")
