"""`OTOTrainingArguments`: `TrainingArguments` plus what Only-Train-Once needs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

from .graph.groups import GROUP_KINDS
from .optim.checks import TRAINER_DEFAULTS, check_dhspg_settings, check_erasing
from .optim.rounding import parse_round_to


@dataclass
class OTOTrainingArguments(TrainingArguments):
    """Arguments of `OTOTrainer`: every `TrainingArguments` field, plus the pruning schedule and DHSPG settings.

    Steps are optimizer steps. A `*_steps` value above 0 wins over the matching `*_ratio` (a fraction of the total
    training steps), as `warmup_steps` does over `warmup_ratio`. The DHSPG settings are checked here, when the
    arguments are built, by the same `oto_hf.optim.checks.check_dhspg_settings` that `DHSPG` runs.

    The defaults are `DHSPG`'s (`oto_hf.optim.checks.DEFAULTS`) except five, on purpose
    (`oto_hf.optim.checks.TRAINER_DEFAULTS`): `sparsity_budget="flops"`, because the trainer can count FLOPs on a
    training example and FLOPs are what a smaller model should save, while `DHSPG` alone has no costs but the groups';
    `dhspg_saliency="auto"`, because the trainer has the model: groups are scored where a linear layer reads them
    (`"output"`: better than `"fisher"` or `"kfac"` on SmolLM2-135M once trained, close to them on MiniLM, where
    `"fisher"` is ahead on BoolQ),
    with `"fisher"` where some group has no such reader (conv channels) or with `erase_operators`;
    `min_heads_per_layer=1`, because the saved model must still run every attention layer; `max_family_sparsity=0.9`,
    because stripping a layer to under a tenth of its width costs more accuracy than the FLOPs it saves; and
    `num_partition_periods=5` whatever `dhspg_lambda_schedule`, a plain number for the command line and the model
    card (`DHSPG` uses one period with the constant schedule, as OTOv2 did; pass 1 for a parity study).

    `erase_operators` is off by default: erasing whole attention or FFN sub-blocks came out within noise of narrowing
    alone at equal FLOPs (README, "Erasing measured"), and an erased model needs oto_hf's classes or a per-layer
    format (`"decilm"`) where a narrowed one may fit a stock config.

    Example:
    ```python
    >>> args = OTOTrainingArguments("out", target_sparsity=0.5, pruning_end_ratio=0.6)  # half the FLOPs
    ```
    """

    target_sparsity: float = field(
        default=TRAINER_DEFAULTS.target_sparsity,
        metadata={"help": "Fraction to remove, in [0, 1): of the groups, the prunable parameters or the FLOPs."},
    )
    sparsity_budget: str = field(
        default=TRAINER_DEFAULTS.sparsity_budget,
        metadata={
            "help": "What `target_sparsity` counts: 'flops' (of the whole model, on one training example), "
            "'params' (of the prunable groups) or 'groups' (a count, as in OTOv2)."
        },
    )
    prune_kinds: list[str] = field(
        default_factory=lambda: list(GROUP_KINDS),
        metadata={"help": "Group kinds to prune: any of 'head', 'neuron', 'channel'."},
    )
    partition_steps: int = field(
        default=TRAINER_DEFAULTS.partition_steps, metadata={"help": "Warm-up steps before the first partition."}
    )
    partition_ratio: float = field(
        default=0.1, metadata={"help": "Warm-up as a fraction of training, used when `partition_steps` is 0."}
    )
    pruning_end_steps: int = field(
        default=0, metadata={"help": "Step by which exactly the target is zero; training then recovers."}
    )
    pruning_end_ratio: float = field(
        default=0.5,
        metadata={"help": "`pruning_end_steps` as a fraction of training, used when `pruning_end_steps` is 0."},
    )
    num_partition_periods: int = field(
        default=TRAINER_DEFAULTS.num_partition_periods,
        metadata={
            "help": "Periods of the pruning window: each re-scores the groups and (progressive schedule) drives the "
            "next share of the target to zero."
        },
    )
    dhspg_variant: str = field(
        default=TRAINER_DEFAULTS.variant, metadata={"help": "Base optimizer: 'adamw', 'adam' or 'sgd'."}
    )
    dhspg_epsilon: float = field(
        default=TRAINER_DEFAULTS.epsilon, metadata={"help": "Half-space projection threshold, in [0, 1)."}
    )
    dhspg_final_epsilon: float | None = field(
        default=TRAINER_DEFAULTS.final_epsilon,
        metadata={"help": "If set, epsilon ramps linearly to this value, in [0, 1), at `pruning_end_steps`."},
    )
    dhspg_lambda: float | None = field(
        default=TRAINER_DEFAULTS.lambda_,
        metadata={"help": "Base group penalty (default 1e-2 for Adam variants, 1e-3 for SGD)."},
    )
    dhspg_lambda_amplify: float | None = field(
        default=TRAINER_DEFAULTS.lambda_amplify, metadata={"help": "Factor (>= 1) on lambda's lower bound."}
    )
    dhspg_lambda_cap: float | None = field(
        default=TRAINER_DEFAULTS.lambda_cap, metadata={"help": "Cap of lambda, as a multiple (>= 1) of it."}
    )
    dhspg_tolerance: float = field(
        default=TRAINER_DEFAULTS.tolerance,
        metadata={"help": "The redundant set covers target + tolerance of the budget; in [0, 1)."},
    )
    dhspg_saliency: str = field(
        default=TRAINER_DEFAULTS.saliency,
        metadata={
            "help": "How groups are ranked: 'fisher' (loss-based importance per unit of the budget's cost: the "
            "squared gradient of a mask on the group, per batch), 'sample_fisher' (the same per training sequence, "
            "from hooks on the linear layer that reads the group), 'kfac' (measured there too: the group's output "
            "against the loss gradient's second moment), 'output' (the same with the gradient taken as isotropic), "
            "'auto' ('output' when a linear layer reads every group, else 'fisher', e.g. for conv channels or with "
            "`erase_operators`) or 'otov2' (OTOv2's cosine and magnitude mix)."
        },
    )
    importance_window: int = field(
        default=TRAINER_DEFAULTS.importance_window,
        metadata={
            "help": "With 'fisher', 'sample_fisher', 'kfac' or 'output': warm-up steps that score the groups at the "
            "first partition (0: one period)."
        },
    )
    saliency_cosine_weight: float = field(
        default=TRAINER_DEFAULTS.saliency_cosine_weight,
        metadata={"help": "With `dhspg_saliency='otov2'`: weight of cos(x_g, d_g)."},
    )
    saliency_magnitude_weight: float = field(
        default=TRAINER_DEFAULTS.saliency_magnitude_weight,
        metadata={"help": "With `dhspg_saliency='otov2'`: weight of the inverse group magnitude."},
    )
    min_heads_per_layer: int = field(
        default=TRAINER_DEFAULTS.min_heads_per_layer,
        metadata={"help": "Attention heads (KV groups with GQA) every layer keeps, whatever the target."},
    )
    min_neurons_per_layer: int = field(
        default=TRAINER_DEFAULTS.min_neurons_per_layer,
        metadata={"help": "FFN neurons every layer keeps (0: a layer may lose its whole FFN, which stays exact)."},
    )
    min_channels_per_layer: int = field(
        default=TRAINER_DEFAULTS.min_channels_per_layer,
        metadata={"help": "Channels every conv layer keeps (a conv layer cannot run with none)."},
    )
    max_family_sparsity: float = field(
        default=TRAINER_DEFAULTS.max_family_sparsity,
        metadata={
            "help": "Most of one layer's heads, FFN neurons or channels that may be removed, in (0, 1]. Families "
            "whose removal would disconnect the output (e.g. a classifier's pooler) always keep a group."
        },
    )
    uniform_widths: bool = field(
        default=TRAINER_DEFAULTS.uniform_widths,
        metadata={
            "help": "Remove the same number of groups from every layer's heads / FFN / conv block, so that a stock "
            "config can describe the pruned model (the target is then met or exceeded by the smallest step)."
        },
    )
    round_to: dict[str, Any] | str | None = field(
        default=TRAINER_DEFAULTS.round_to,
        metadata={
            "help": "Engine-friendly widths, trained to rather than padded: per group kind, an int m (every layer "
            "keeps a multiple of m, or all), 'uniform' (the same count in every layer) or 'free'. JSON or kind=value "
            "pairs, e.g. 'neuron=128,head=uniform'."
        },
    )
    dhspg_lambda_schedule: str = field(
        default=TRAINER_DEFAULTS.lambda_schedule,
        metadata={
            "help": "'progressive' drives one share of the target to zero per period along planned trajectories; "
            "'constant' is OTOv2's rule alone (the deadline then does most of the pruning)."
        },
    )
    erase_operators: bool = field(
        default=False,
        metadata={
            "help": "Let whole attention sub-blocks, FFN sub-blocks and blocks compete with single heads and neurons "
            "for the target (H2SPG); erased ones are removed when saving. Needs the progressive schedule, free widths "
            "and the fisher saliency."
        },
    )
    distillation: str = field(
        default="off",
        metadata={
            "help": "Distil into the pruned model while it trains: 'off', 'dense' (from the starting model, frozen) "
            "or the path or Hub name of a teacher with the same task head."
        },
    )
    distillation_alpha: float = field(
        default=0.5, metadata={"help": "Weight of the distillation loss; the task loss gets 1 - alpha."}
    )
    distillation_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of distillation."})
    distillation_hidden_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of a mean-squared error between student and teacher hidden states (0: off)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.round_to, str):
            self.round_to = parse_round_to("round_to", self.round_to)
        # 0 steps mean "from the ratio": resolved with the run's length, checked then (`pruning_schedule`).
        settings = {**self._dhspg_settings(), "pruning_end_steps": self.pruning_end_steps or None}
        names = {key: name for name, key in dhspg_setting_names().items()}
        check_dhspg_settings(settings, names=names)
        check_erasing(self.erase_operators, settings, {**names, "erase": "erase_operators"})
        unknown = [kind for kind in self.prune_kinds if kind not in GROUP_KINDS]
        if unknown or not self.prune_kinds:
            raise ValueError(
                f"`prune_kinds` must be a non-empty subset of {list(GROUP_KINDS)}, got {self.prune_kinds}."
            )
        if self.min_heads_per_layer < 1:
            raise ValueError(
                f"`min_heads_per_layer` must be >= 1 (attention layers cannot run with no head), got "
                f"{self.min_heads_per_layer}."
            )
        for name in ("partition_ratio", "pruning_end_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        if not self.pruning_end_steps and not self.partition_steps and self.pruning_end_ratio <= self.partition_ratio:
            raise ValueError(
                f"`pruning_end_ratio` ({self.pruning_end_ratio}) must be greater than `partition_ratio` "
                f"({self.partition_ratio})."
            )
        if not self.distillation:
            raise ValueError("`distillation` must be 'off', 'dense' or a teacher's path or Hub name, got ''.")
        if not 0.0 <= self.distillation_alpha <= 1.0:
            raise ValueError(f"`distillation_alpha` must be in [0, 1], got {self.distillation_alpha}.")
        if not self.distillation_temperature > 0:
            raise ValueError(f"`distillation_temperature` must be > 0, got {self.distillation_temperature}.")
        if self.distillation_hidden_weight < 0:
            raise ValueError(f"`distillation_hidden_weight` must be >= 0, got {self.distillation_hidden_weight}.")

    def pruning_schedule(self, num_training_steps: int) -> tuple[int, int]:
        """`(partition_steps, pruning_end_steps)` in optimizer steps for a run of `num_training_steps`, the ratios
        resolved."""
        partition = self.partition_steps or int(self.partition_ratio * num_training_steps)
        end = self.pruning_end_steps or max(int(self.pruning_end_ratio * num_training_steps), partition + 1)
        if end <= partition:
            raise ValueError(
                f"The pruning schedule is empty: partition step {partition}, pruning end {end} (training has "
                f"{num_training_steps} steps). Set `pruning_end_steps` after `partition_steps`."
            )
        if end > num_training_steps:
            raise ValueError(
                f"`pruning_end_steps` ({end}) is after the last training step ({num_training_steps}); the target "
                "would never be reached. Lower `pruning_end_steps` or train longer."
            )
        return partition, end

    def dhspg_kwargs(self, num_training_steps: int) -> dict[str, Any]:
        """The OTO settings as `DHSPG` keyword arguments, for a run of `num_training_steps`.

        Names are shared: a field is passed under its own name, and a `dhspg_<name>` field as `<name>` (`dhspg_lambda`
        as `lambda_`; see `dhspg_setting_names`). The ratios are resolved into steps; the fields of
        `TRAINER_ONLY_FIELDS` serve the trainer.
        """
        partition, end = self.pruning_schedule(num_training_steps)
        return {
            **self._dhspg_settings(),
            "partition_steps": partition,
            "pruning_end_steps": end,
            "num_partition_periods": min(self.num_partition_periods, end - partition),
        }

    def _dhspg_settings(self) -> dict[str, Any]:
        """The DHSPG settings of these arguments under `DHSPG`'s names, as set (the schedule not resolved)."""
        return {key: getattr(self, name) for name, key in dhspg_setting_names().items()}


# Fields of `OTOTrainingArguments` that are not `DHSPG` settings: discovery, the schedule's ratios, distillation.
TRAINER_ONLY_FIELDS: tuple[str, ...] = (
    "prune_kinds",
    "partition_ratio",
    "pruning_end_ratio",
    "erase_operators",
    "distillation",
    "distillation_alpha",
    "distillation_temperature",
    "distillation_hidden_weight",
)
# The `TrainingArguments` fields that matter for reproduction, recorded with the OTO fields by `training_settings`.
TRAINING_SETTINGS: tuple[str, ...] = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "seed",
)


def oto_field_names() -> list[str]:
    """Names of the fields `OTOTrainingArguments` adds to `TrainingArguments`, in declaration order."""
    inherited = {f.name for f in fields(TrainingArguments)}
    return [f.name for f in fields(OTOTrainingArguments) if f.name not in inherited]


def dhspg_setting_names() -> dict[str, str]:
    """Each OTO field that is a `DHSPG` setting, mapped to `DHSPG`'s argument name: its own name, or `<name>` for a
    `dhspg_<name>` field (`lambda_` for `dhspg_lambda`)."""
    names = {}
    for name in oto_field_names():
        if name not in TRAINER_ONLY_FIELDS:
            key = name.removeprefix("dhspg_")
            names[name] = "lambda_" if key == "lambda" else key
    return names


def training_settings(training_args: Any) -> dict[str, Any]:
    """The settings of `training_args` that `OTOTrainer` records and model cards show: the OTO fields and the main
    optimisation settings (`TRAINING_SETTINGS`), never the whole arguments (they hold secrets such as `hub_token`).

    Args:
        training_args (`OTOTrainingArguments`, `TrainingArguments`, `dict` or `None`): the arguments of the run.
    """
    if training_args is None:
        return {}
    if isinstance(training_args, Mapping):
        values = dict(training_args)
    elif callable(getattr(training_args, "to_dict", None)):
        values = training_args.to_dict()
    else:
        raise ValueError(
            "`training_args` must be OTOTrainingArguments, TrainingArguments, a dict or None, got "
            f"{type(training_args).__name__}."
        )
    names = (*oto_field_names(), *TRAINING_SETTINGS)
    return {name: values[name] for name in names if values.get(name) is not None}
