"""`oto_hf.optim.checks`: one set of defaults and one check for the DHSPG settings."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from oto_hf import OTOTrainingArguments
from oto_hf.optim import DHSPG
from oto_hf.optim.checks import DEFAULTS, TRAINER_DEFAULTS, check_dhspg_settings
from oto_hf.training_args import dhspg_setting_names


def test_dhspg_takes_its_defaults_from_the_one_place():
    parameters = inspect.signature(DHSPG).parameters
    for field in dataclasses.fields(DEFAULTS):
        assert parameters[field.name].default == getattr(DEFAULTS, field.name), field.name


def test_the_trainer_defaults_differ_only_where_its_docstring_says_why():
    names = [f.name for f in dataclasses.fields(DEFAULTS)]
    differ = {name for name in names if getattr(DEFAULTS, name) != getattr(TRAINER_DEFAULTS, name)}
    assert differ == {"sparsity_budget", "saliency", "min_heads_per_layer", "max_family_sparsity",
                      "num_partition_periods"}  # fmt: skip
    field_names = {key: name for name, key in dhspg_setting_names().items()}  # `saliency` is `dhspg_saliency`
    for name in differ:
        assert f"`{field_names[name]}=" in OTOTrainingArguments.__doc__


@pytest.mark.parametrize("defaults", [DEFAULTS, TRAINER_DEFAULTS], ids=["dhspg", "trainer"])
def test_the_defaults_pass_the_check(defaults):
    check_dhspg_settings(dataclasses.asdict(defaults))


def test_messages_name_each_setting_as_the_caller_spells_it():
    with pytest.raises(ValueError, match=r"`dhspg_tolerance` must be in \[0, 1\), got 2.0"):
        check_dhspg_settings({"tolerance": 2.0}, names={"tolerance": "dhspg_tolerance"})
    with pytest.raises(ValueError, match=r"`tolerance` must be in \[0, 1\), got 2.0"):
        check_dhspg_settings({"tolerance": 2.0})
    with pytest.raises(ValueError, match=r"`dhspg_epsilon` must be in \[0, 1\), got True"):
        check_dhspg_settings({"epsilon": True}, names={"epsilon": "dhspg_epsilon"})  # a bool is not a number


def test_only_the_settings_given_are_checked_and_pairs_against_each_other():
    check_dhspg_settings({"lambda_": None, "pruning_end_steps": 5})  # None: decided from other settings
    with pytest.raises(
        ValueError, match=r"`pruning_end_steps` must be an int greater than `partition_steps` \(10\), got 5"
    ):
        check_dhspg_settings({"partition_steps": 10, "pruning_end_steps": 5})
    check_dhspg_settings({"saliency_cosine_weight": 0.0})  # the other weight counts at its default, 0.5
    with pytest.raises(
        ValueError,
        match=r"`saliency_cosine_weight` and `saliency_magnitude_weight` must be non-negative numbers, not both zero, "
        r"got \(0.0, -1.0\)",
    ):
        check_dhspg_settings({"saliency_cosine_weight": 0.0, "saliency_magnitude_weight": -1.0})


def test_an_unknown_setting_is_a_type_error():
    with pytest.raises(TypeError, match=r"Unknown DHSPG settings \['lamda'\]"):
        check_dhspg_settings({"lamda": 1.0})
