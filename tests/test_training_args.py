"""`OTOTrainingArguments`: every bad setting fails when the arguments are built, the defaults, the DHSPG keyword
arguments and the settings a run records."""

from __future__ import annotations

import json

import pytest
from transformers import TrainingArguments

from oto_hf import DHSPG, OTOTrainingArguments
from oto_hf.optim.checks import TRAINER_DEFAULTS
from oto_hf.training_args import TRAINER_ONLY_FIELDS, dhspg_setting_names, oto_field_names, training_settings
from tests.utils.dhspg_toys import TinyModel, tiny_groups

# Each DHSPG setting with a bad value, and the message `OTOTrainingArguments(...)` raises, naming the field.
BAD_DHSPG_SETTINGS = [
    (dict(target_sparsity=1.2), r"`target_sparsity` must be in \[0, 1\), got 1.2"),
    (dict(sparsity_budget="bytes"), r"`sparsity_budget` must be one of \('groups', 'params', 'flops'\), got 'bytes'"),
    (dict(partition_steps=-1), r"`partition_steps` must be an int >= 0, got -1"),
    (
        dict(partition_steps=10, pruning_end_steps=5),
        r"`pruning_end_steps` must be an int greater than `partition_steps` \(10\), got 5",
    ),
    (dict(num_partition_periods=0), r"`num_partition_periods` must be an int >= 1, got 0"),
    (dict(dhspg_variant="lion"), r"`dhspg_variant` must be one of \('sgd', 'adam', 'adamw'\), got 'lion'"),
    (dict(dhspg_epsilon=1.0), r"`dhspg_epsilon` must be in \[0, 1\), got 1.0"),
    (dict(dhspg_final_epsilon=1.5), r"`dhspg_final_epsilon` must be in \[0, 1\), got 1.5"),
    (dict(dhspg_lambda=0.0), r"`dhspg_lambda` must be > 0, got 0.0"),
    (dict(dhspg_lambda_amplify=0.5), r"`dhspg_lambda_amplify` must be >= 1, got 0.5"),
    (dict(dhspg_lambda_cap=float("inf")), r"`dhspg_lambda_cap` must be >= 1, got inf"),
    (dict(dhspg_tolerance=-0.1), r"`dhspg_tolerance` must be in \[0, 1\), got -0.1"),
    (
        dict(dhspg_saliency="magnitude"),
        r"`dhspg_saliency` must be one of \('auto', 'fisher', 'output', 'kfac', 'sample_fisher', 'otov2'\), got "
        r"'magnitude'",
    ),
    (dict(importance_window=-1), r"`importance_window` must be an int >= 0, got -1"),
    (
        dict(saliency_cosine_weight=-0.5),
        r"`saliency_cosine_weight` and `saliency_magnitude_weight` must be non-negative numbers, not both zero, "
        r"got \(-0.5, 0.5\)",
    ),
    (
        dict(saliency_cosine_weight=0.0, saliency_magnitude_weight=0.0),
        r"`saliency_cosine_weight` and `saliency_magnitude_weight` must be non-negative numbers, not both zero",
    ),
    (dict(min_heads_per_layer=0), r"`min_heads_per_layer` must be >= 1 \(attention layers cannot run with no head\)"),
    (dict(min_neurons_per_layer=-1), r"`min_neurons_per_layer` must be an int >= 0, got -1"),
    (dict(min_channels_per_layer=-1), r"`min_channels_per_layer` must be an int >= 0, got -1"),
    (dict(max_family_sparsity=0.0), r"`max_family_sparsity` must be in \(0, 1\], got 0.0"),
    (dict(uniform_widths="yes"), r"`uniform_widths` must be a bool, got 'yes'"),
    (dict(round_to={"neuron": 0}), r"`round_to\['neuron'\]` must be an int >= 1 .*got 0"),
    (
        dict(dhspg_lambda_schedule="cosine"),
        r"`dhspg_lambda_schedule` must be one of \('progressive', 'constant'\), got 'cosine'",
    ),
]
# The trainer's own fields.
BAD_TRAINER_SETTINGS = [
    (dict(prune_kinds=["layer"]), r"`prune_kinds` must be a non-empty subset of \['head', 'neuron', 'channel'\]"),
    (dict(prune_kinds=[]), r"`prune_kinds` must be a non-empty subset"),
    (dict(partition_ratio=1.5), r"`partition_ratio` must be in \[0, 1\], got 1.5"),
    (
        dict(partition_ratio=0.6, pruning_end_ratio=0.5),
        r"`pruning_end_ratio` \(0.5\) must be greater than `partition_ratio` \(0.6\)",
    ),
    (dict(distillation=""), "`distillation` must be 'off', 'dense' or a teacher's path"),
    (dict(distillation_alpha=1.5), r"`distillation_alpha` must be in \[0, 1\], got 1.5"),
    (dict(distillation_temperature=0.0), r"`distillation_temperature` must be > 0, got 0.0"),
    (dict(distillation_hidden_weight=-1.0), r"`distillation_hidden_weight` must be >= 0, got -1.0"),
]


def oto_args(output_dir: str = "out", **overrides) -> OTOTrainingArguments:
    return OTOTrainingArguments(output_dir, report_to=[], use_cpu=True, **overrides)


@pytest.mark.parametrize("overrides, message", BAD_DHSPG_SETTINGS + BAD_TRAINER_SETTINGS)
def test_a_bad_setting_fails_when_the_arguments_are_built(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        oto_args(str(tmp_path), **overrides)


def test_every_dhspg_setting_has_a_bad_value_case():
    checked = {name for overrides, _ in BAD_DHSPG_SETTINGS for name in overrides}
    assert set(dhspg_setting_names()) <= checked


def test_the_defaults_are_the_trainer_defaults_of_dhspgs_settings():
    args = oto_args()
    for name, key in dhspg_setting_names().items():
        if key != "pruning_end_steps":  # 0: from `pruning_end_ratio`
            assert getattr(args, name) == getattr(TRAINER_DEFAULTS, key), name


def test_dhspg_settings_share_names_with_the_training_arguments():
    """Every OTO field is a DHSPG keyword argument under the shared name, or listed as the trainer's own."""
    args = oto_args(dhspg_lambda=0.5, min_neurons_per_layer=2, sparsity_budget="groups")
    kwargs = args.dhspg_kwargs(100)
    assert kwargs["lambda_"] == 0.5 and kwargs["min_neurons_per_layer"] == 2 and kwargs["importance_window"] == 0
    assert (kwargs["partition_steps"], kwargs["pruning_end_steps"]) == args.pruning_schedule(100) == (10, 50)
    assert set(dhspg_setting_names()) | set(TRAINER_ONLY_FIELDS) == set(oto_field_names())
    assert set(kwargs) == set(dhspg_setting_names().values())
    model = TinyModel()
    optimizer = DHSPG.from_model(model, tiny_groups(model), **kwargs)  # DHSPG takes them as they are
    assert optimizer.partition_points == (10, 18, 26, 34, 42)


def test_the_schedule_is_clamped_to_a_short_run_and_refused_past_its_end():
    args = oto_args(num_partition_periods=5, partition_steps=4, pruning_end_steps=7)
    assert args.dhspg_kwargs(10)["num_partition_periods"] == 3  # one period per pruning step at most
    with pytest.raises(ValueError, match=r"`pruning_end_steps` \(7\) is after the last training step \(6\)"):
        args.dhspg_kwargs(6)


def test_training_settings_record_the_oto_fields_and_the_main_optimisation_settings_only():
    args = oto_args(target_sparsity=0.3, max_steps=24, hub_token="hf_secret_never_recorded")
    settings = training_settings(args)
    assert (settings["target_sparsity"], settings["max_steps"], settings["dhspg_variant"]) == (0.3, 24, "adamw")
    assert "dhspg_final_epsilon" not in settings  # None values are left out
    assert set(settings) <= {*oto_field_names(), "learning_rate", "lr_scheduler_type", "warmup_steps",
                             "weight_decay", "max_steps", "num_train_epochs", "per_device_train_batch_size",
                             "gradient_accumulation_steps", "optim", "seed"}  # fmt: skip
    assert "hf_secret_never_recorded" not in json.dumps(settings, default=str)
    plain = training_settings(TrainingArguments("out", learning_rate=1e-4, report_to=[]))
    assert plain["learning_rate"] == 1e-4 and "target_sparsity" not in plain
    assert training_settings({"target_sparsity": 0.2, "hub_token": "x"}) == {"target_sparsity": 0.2}
    assert training_settings(None) == {}
    with pytest.raises(ValueError, match="`training_args` must be OTOTrainingArguments, TrainingArguments, a dict"):
        training_settings(["target_sparsity"])
