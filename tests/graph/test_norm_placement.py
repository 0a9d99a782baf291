"""Where a model normalises its residual stream, read from its traced graph."""

from __future__ import annotations

import pytest

from oto_hf.graph.export import export_model
from oto_hf.graph.norm_placement import is_post_norm
from tests.utils.tiny_models import CASES, user_inputs

POST_NORM = {"bert", "roberta", "distilbert", "deberta-v2", "albert"}  # LayerNorm(x + f(x)) after every branch


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_post_norm_models_are_told_from_pre_norm_and_convolutional_ones(case):
    model = case.build()
    assert is_post_norm(export_model(model, user_inputs(model))) == (case.name in POST_NORM)
