"""`OTOTrainingArguments`: `TrainingArguments` plus what Only-Train-Once needs."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

from .graph.groups import GROUP_KINDS
from .optim.base_steps import VARIANTS
from .optim.dhspg import LAMBDA_SCHEDULES, SALIENCIES
from .optim.selection import BUDGETS


@dataclass
class OTOTrainingArguments(TrainingArguments):
    """Arguments of `OTOTrainer`: every `TrainingArguments` field, plus the pruning schedule and DHSPG settings.

    Steps are optimizer steps. A `*_steps` value above 0 wins over the matching `*_ratio` (a fraction of the total
    training steps), as `warmup_steps` does over `warmup_ratio`.

    Example:
    ```python
    >>> args = OTOTrainingArguments("out", target_sparsity=0.5, pruning_end_ratio=0.6)  # half the FLOPs
    ```
    """

    target_sparsity: float = field(
        default=0.5,
        metadata={"help": "Fraction to remove, in [0, 1): of the groups, the prunable parameters or the FLOPs."},
    )
    sparsity_budget: str = field(
        default="flops",
        metadata={
            "help": "What `target_sparsity` counts: 'flops' (of the whole model, on one training example), "
            "'params' (of the prunable groups) or 'groups' (a count, as in OTOv2)."
        },
    )
    prune_kinds: list[str] = field(
        default_factory=lambda: list(GROUP_KINDS),
        metadata={"help": "Group kinds to prune: any of 'head', 'neuron', 'channel'."},
    )
    partition_steps: int = field(default=0, metadata={"help": "Warm-up steps before the first partition."})
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
        default=5,
        metadata={
            "help": "Periods of the pruning window: each re-scores the groups and (progressive schedule) drives the "
            "next share of the target to zero."
        },
    )
    dhspg_variant: str = field(default="adamw", metadata={"help": "Base optimizer: 'adamw', 'adam' or 'sgd'."})
    dhspg_epsilon: float = field(default=0.0, metadata={"help": "Half-space projection threshold, in [0, 1)."})
    dhspg_final_epsilon: float | None = field(
        default=None, metadata={"help": "If set, epsilon ramps linearly to this value at `pruning_end`."}
    )
    dhspg_lambda: float | None = field(
        default=None, metadata={"help": "Base group penalty (default 1e-2 for Adam variants, 1e-3 for SGD)."}
    )
    dhspg_lambda_amplify: float | None = field(default=None, metadata={"help": "Factor on lambda's lower bound."})
    dhspg_lambda_cap: float | None = field(default=None, metadata={"help": "Cap of lambda, as a multiple of it."})
    dhspg_tolerance: float = field(
        default=0.05, metadata={"help": "The redundant set covers target + tolerance of the budget."}
    )
    dhspg_saliency: str = field(
        default="fisher",
        metadata={
            "help": "How groups are ranked: 'fisher' (loss-based importance per unit of the budget's cost) or "
            "'otov2' (OTOv2's cosine and magnitude mix)."
        },
    )
    importance_window: int = field(
        default=0,
        metadata={
            "help": "With 'fisher': warm-up steps whose gradients score the groups at the first partition (0: one "
            "period)."
        },
    )
    saliency_cosine_weight: float = field(
        default=0.5, metadata={"help": "With `dhspg_saliency='otov2'`: weight of cos(x_g, d_g)."}
    )
    saliency_magnitude_weight: float = field(
        default=0.5, metadata={"help": "With `dhspg_saliency='otov2'`: weight of the inverse group magnitude."}
    )
    min_heads_per_layer: int = field(
        default=1, metadata={"help": "Attention heads (KV groups with GQA) every layer keeps, whatever the target."}
    )
    min_neurons_per_layer: int = field(
        default=0,
        metadata={"help": "FFN neurons every layer keeps (0: a layer may lose its whole FFN, which stays exact)."},
    )
    min_channels_per_layer: int = field(
        default=1, metadata={"help": "Channels every conv layer keeps (a conv layer cannot run with none)."}
    )
    max_family_sparsity: float = field(
        default=0.9,
        metadata={
            "help": "Most of one layer's heads, FFN neurons or channels that may be removed, in (0, 1]. Families "
            "whose removal would disconnect the output (e.g. a classifier's pooler) always keep a group."
        },
    )
    uniform_widths: bool = field(
        default=False,
        metadata={
            "help": "Remove the same number of groups from every layer's heads / FFN / conv block, so that a stock "
            "config can describe the pruned model (the target is then met or exceeded by the smallest step)."
        },
    )
    dhspg_lambda_schedule: str = field(
        default="progressive",
        metadata={
            "help": "'progressive' drives one share of the target to zero per period along planned trajectories; "
            "'constant' is OTOv2's rule alone (the deadline then does most of the pruning)."
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
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"`target_sparsity` must be in [0, 1), got {self.target_sparsity}.")
        if self.sparsity_budget not in BUDGETS:
            raise ValueError(f"`sparsity_budget` must be one of {list(BUDGETS)}, got {self.sparsity_budget!r}.")
        unknown = [kind for kind in self.prune_kinds if kind not in GROUP_KINDS]
        if unknown or not self.prune_kinds:
            raise ValueError(
                f"`prune_kinds` must be a non-empty subset of {list(GROUP_KINDS)}, got {self.prune_kinds}."
            )
        if self.dhspg_saliency not in SALIENCIES:
            raise ValueError(f"`dhspg_saliency` must be one of {list(SALIENCIES)}, got {self.dhspg_saliency!r}.")
        if self.importance_window < 0:
            raise ValueError(f"`importance_window` must be >= 0, got {self.importance_window}.")
        if not 0.0 < self.max_family_sparsity <= 1.0:
            raise ValueError(f"`max_family_sparsity` must be in (0, 1], got {self.max_family_sparsity}.")
        if not self.distillation:
            raise ValueError("`distillation` must be 'off', 'dense' or a teacher's path or Hub name, got ''.")
        if not 0.0 <= self.distillation_alpha <= 1.0:
            raise ValueError(f"`distillation_alpha` must be in [0, 1], got {self.distillation_alpha}.")
        if not self.distillation_temperature > 0:
            raise ValueError(f"`distillation_temperature` must be > 0, got {self.distillation_temperature}.")
        if self.distillation_hidden_weight < 0:
            raise ValueError(f"`distillation_hidden_weight` must be >= 0, got {self.distillation_hidden_weight}.")
        if self.dhspg_lambda_schedule not in LAMBDA_SCHEDULES:
            raise ValueError(
                f"`dhspg_lambda_schedule` must be one of {list(LAMBDA_SCHEDULES)}, got {self.dhspg_lambda_schedule!r}."
            )
        if self.dhspg_variant not in VARIANTS:
            raise ValueError(f"`dhspg_variant` must be one of {list(VARIANTS)}, got {self.dhspg_variant!r}.")
        for name in ("partition_ratio", "pruning_end_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        for name in ("partition_steps", "pruning_end_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.min_heads_per_layer < 1:
            raise ValueError(
                f"`min_heads_per_layer` must be >= 1 (attention layers cannot run with no head), got "
                f"{self.min_heads_per_layer}."
            )
        for name in ("min_neurons_per_layer", "min_channels_per_layer"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.num_partition_periods < 1:
            raise ValueError(f"`num_partition_periods` must be >= 1, got {self.num_partition_periods}.")
        if not 0.0 <= self.dhspg_epsilon < 1.0:
            raise ValueError(f"`dhspg_epsilon` must be in [0, 1), got {self.dhspg_epsilon}.")
        if self.saliency_cosine_weight < 0 or self.saliency_magnitude_weight < 0:
            raise ValueError("`saliency_cosine_weight` and `saliency_magnitude_weight` must be >= 0.")
        if self.saliency_cosine_weight + self.saliency_magnitude_weight == 0:
            raise ValueError("`saliency_cosine_weight` and `saliency_magnitude_weight` cannot both be 0.")
        if self.pruning_end_steps and self.pruning_end_steps <= self.partition_steps:
            raise ValueError(
                f"`pruning_end_steps` ({self.pruning_end_steps}) must be after `partition_steps` "
                f"({self.partition_steps})."
            )
        if not self.pruning_end_steps and not self.partition_steps and self.pruning_end_ratio <= self.partition_ratio:
            raise ValueError(
                f"`pruning_end_ratio` ({self.pruning_end_ratio}) must be greater than `partition_ratio` "
                f"({self.partition_ratio})."
            )

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
        as `lambda_`). The ratios are resolved into steps; the fields of `TRAINER_ONLY_FIELDS` serve the trainer.
        """
        kwargs = {}
        for name in oto_field_names():
            if name in TRAINER_ONLY_FIELDS:
                continue
            key = name.removeprefix("dhspg_")
            kwargs["lambda_" if key == "lambda" else key] = getattr(self, name)
        partition, end = self.pruning_schedule(num_training_steps)
        kwargs.update(
            partition_steps=partition,
            pruning_end_steps=end,
            num_partition_periods=min(self.num_partition_periods, end - partition),
            importance_window=self.importance_window or None,
        )
        return kwargs


# Fields of `OTOTrainingArguments` that are not `DHSPG` settings: discovery, the schedule's ratios, distillation.
TRAINER_ONLY_FIELDS: tuple[str, ...] = (
    "prune_kinds",
    "partition_ratio",
    "pruning_end_ratio",
    "distillation",
    "distillation_alpha",
    "distillation_temperature",
    "distillation_hidden_weight",
)


def oto_field_names() -> list[str]:
    """Names of the fields `OTOTrainingArguments` adds to `TrainingArguments`, in declaration order."""
    inherited = {f.name for f in fields(TrainingArguments)}
    return [f.name for f in fields(OTOTrainingArguments) if f.name not in inherited]
