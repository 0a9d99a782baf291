"""oto_hf.utils: eval mode, example inputs as call arguments, device moves."""

import pytest
import torch
from torch import nn

from oto_hf.utils import as_args_kwargs, device_of, eval_mode, to_device


def test_eval_mode_restores_each_submodule_flag():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model[1].eval()  # a submodule kept in eval mode on purpose
    with eval_mode(model):
        assert not any(module.training for module in model.modules())
    assert model.training and model[0].training and not model[1].training


def test_eval_mode_restores_after_an_error():
    model = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training


def test_as_args_kwargs():
    tensor = torch.zeros(1)
    assert as_args_kwargs({"x": tensor}) == ((), {"x": tensor})
    assert as_args_kwargs([tensor, 3]) == ((tensor, 3), {})
    assert as_args_kwargs(tensor) == ((tensor,), {})
    with pytest.raises(TypeError, match="must be a dict of keyword arguments.*got int"):
        as_args_kwargs(3)


def test_to_device_and_device_of():
    inputs = {"ids": torch.ones(2), "nested": [torch.zeros(1), "text"], "flag": False}
    moved = to_device(inputs, "meta")
    assert moved["ids"].is_meta and moved["nested"][0].is_meta
    assert moved["nested"][1] == "text" and moved["flag"] is False and not inputs["ids"].is_meta
    assert device_of(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert device_of(nn.ReLU()) == torch.device("cpu")  # no parameters
