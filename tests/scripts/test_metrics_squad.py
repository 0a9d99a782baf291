"""The local copies of the SQuAD metric modules (scripts/metrics) through `evaluate`, against hand-computed scores."""

import pytest

from metrics import load_metric


@pytest.fixture(scope="module")
def squad():
    module, source = load_metric("squad", prefer_local=True)
    assert source.endswith("(local copy)")
    return module


@pytest.fixture(scope="module")
def squad_v2():
    module, source = load_metric("squad_v2", prefer_local=True)
    assert source.endswith("(local copy)")
    return module


def _refs(*golds):
    return [{"id": f"q{i}", "answers": {"text": list(g), "answer_start": [0] * len(g)}} for i, g in enumerate(golds)]


def _preds(*texts, probabilities=None):
    if probabilities is None:
        return [{"id": f"q{i}", "prediction_text": t} for i, t in enumerate(texts)]
    return [
        {"id": f"q{i}", "prediction_text": t, "no_answer_probability": p}
        for i, (t, p) in enumerate(zip(texts, probabilities))
    ]


@pytest.mark.parametrize(
    "prediction, golds, exact, f1",
    [
        ("the Eiffel Tower", ["Eiffel Tower"], 100.0, 100.0),  # article dropped
        ("Eiffel  tower!", ["eiffel tower"], 100.0, 100.0),  # case, punctuation, whitespace
        ("An apple", ["apple"], 100.0, 100.0),
        ("in Paris France", ["Paris"], 0.0, 50.0),  # P = 1/3, R = 1: F1 = 2 * (1/3) / (4/3) = 0.5
        ("Paris", ["Paris, France"], 0.0, 2 / 3 * 100),  # P = 1, R = 1/2
        ("Denver Broncos", ["Broncos", "Denver Broncos", "the Broncos"], 100.0, 100.0),  # best gold wins
        ("Carolina", ["Denver Broncos"], 0.0, 0.0),
        ("the the cat", ["cat cat"], 0.0, 2 / 3 * 100),  # token counts: 1 'cat' predicted, 2 gold: P 1, R 1/2
        ("", ["cat"], 0.0, 0.0),
    ],
)
def test_squad_single_question(squad, prediction, golds, exact, f1):
    result = squad.compute(predictions=_preds(prediction), references=_refs(golds))
    assert set(result) == {"exact_match", "f1"}
    assert result["exact_match"] == pytest.approx(exact)
    assert result["f1"] == pytest.approx(f1)


def test_squad_averages_in_percent(squad):
    references = _refs(["Paris"], ["in 1889"], ["Gustave Eiffel"])
    result = squad.compute(predictions=_preds("Paris", "1889", "Eiffel"), references=references)
    # q0: EM 1, F1 1; q1 "1889" vs "in 1889": P 1, R 1/2, F1 2/3; q2 "eiffel" vs "gustave eiffel": F1 2/3
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)


def test_unanswered_question_scores_zero():
    # `evaluate` needs as many predictions as references, so the scoring function is checked directly
    from metrics.squad.squad import squad_scores

    result = squad_scores({"q0": "Paris"}, {"q0": ["Paris"], "q1": ["Lyon"]})
    assert result == {"exact_match": 50.0, "f1": 50.0}


def test_squad_v2_has_and_no_answer_breakdown(squad_v2):
    references = _refs(["Paris"], [], ["the tower"], [])
    predictions = _preds("Paris", "", "tower of Paris", "Lyon", probabilities=[0.1, 0.9, 0.2, 0.3])
    result = squad_v2.compute(predictions=predictions, references=references)
    # HasAns: q0 EM 1 F1 1; q2 "tower of paris" vs "tower": EM 0, F1 2*(1/3*1)/(4/3) = 0.5
    # NoAns: q1 "" -> 1; q3 "Lyon" -> 0
    assert result["total"] == 4 and result["HasAns_total"] == 2 and result["NoAns_total"] == 2
    assert result["exact"] == pytest.approx(100 * 2 / 4)
    assert result["f1"] == pytest.approx(100 * (1 + 0.5 + 1 + 0) / 4)
    assert result["HasAns_exact"] == pytest.approx(50.0) and result["HasAns_f1"] == pytest.approx(75.0)
    assert result["NoAns_exact"] == pytest.approx(50.0) and result["NoAns_f1"] == pytest.approx(50.0)
    # Thresholds: answer only below the threshold. At t=0.2 (q0, q2 answered; q3 "Lyon" abstains): EM (1+0+1+1)/4.
    assert result["best_exact"] == pytest.approx(75.0)
    assert result["best_exact_thresh"] == pytest.approx(0.1)  # the first threshold reaching 3 (ties keep the lowest)
    assert result["best_f1"] == pytest.approx(100 * (1 + 0.5 + 1 + 1) / 4)
    assert result["best_f1_thresh"] == pytest.approx(0.2)


def test_squad_v2_threshold_turns_answers_into_no_answer(squad_v2):
    references = _refs(["Paris"], [])
    predictions = _preds("Paris", "Lyon", probabilities=[0.2, 0.8])
    plain = squad_v2.compute(predictions=predictions, references=references)
    assert plain["exact"] == pytest.approx(50.0)
    strict = squad_v2.compute(predictions=predictions, references=references, no_answer_threshold=0.5)
    assert strict["exact"] == pytest.approx(100.0) and strict["NoAns_exact"] == pytest.approx(100.0)


def test_squad_v2_only_answerable_has_no_noans_keys(squad_v2):
    result = squad_v2.compute(predictions=_preds("a cat", probabilities=[0.0]), references=_refs(["cat"]))
    assert result["exact"] == 100.0 and "NoAns_total" not in result and result["HasAns_total"] == 1


def test_squad_v2_gold_that_normalises_to_empty_is_unanswerable(squad_v2):
    # official v2 scoring: gold answers empty after normalisation leave [""] as the only gold
    result = squad_v2.compute(predictions=_preds("", probabilities=[0.5]), references=_refs(["The"]))
    assert result["exact"] == 100.0 and result["NoAns_total"] == 1


def test_unknown_local_metric_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"No local metric module 'rouge' .*: \['accuracy', 'f1', 'squad', 'squad_v2'\]"
    ):
        load_metric("rouge", prefer_local=True)
