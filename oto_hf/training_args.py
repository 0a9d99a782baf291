"""`OTOTrainingArguments`: `TrainingArguments` plus what Only-Train-Once needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .graph.groups import GROUP_KINDS


BUDGETS = ("groups", "params", "flops")
VARIANTS = ("adamw", "adam", "sgd")
LAMBDA_SCHEDULES = ("constant", "adaptive")


@dataclass
class OTOTrainingArguments(TrainingArguments):
    """Arguments of `OTOTrainer`: every `TrainingArguments` field, plus the pruning schedule and DHSPG settings.

    Steps are optimizer steps. A `*_steps` value above 0 wins over the matching `*_ratio` (a fraction of the total
    training steps), as `warmup_steps` does over `warmup_ratio`.

    Example:
    ```python
    >>> args = OTOTrainingArguments("out", target_sparsity=0.5, sparsity_budget="flops", pruning_end_ratio=0.6)
    ```
    """

    target_sparsity: float = field(
        default=0.5,
        metadata={"help": "Fraction to remove, in [0, 1): of the groups, the prunable parameters or the FLOPs."},
    )
    sparsity_budget: str = field(
        default="groups",
        metadata={"help": "What `target_sparsity` counts: 'groups' (OTO), 'params' or 'flops'."},
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
        default=0.5, metadata={"help": "`pruning_end` as a fraction of training, used when `pruning_end_steps` is 0."}
    )
    num_partition_periods: int = field(
        default=1, metadata={"help": "Re-score groups and re-choose the redundant set this many times."}
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
    saliency_cosine_weight: float = field(
        default=0.5, metadata={"help": "Weight of cos(x_g, d_g) in the redundancy score."}
    )
    saliency_magnitude_weight: float = field(
        default=0.5, metadata={"help": "Weight of the inverse group magnitude in the redundancy score."}
    )
    min_heads_per_layer: int = field(
        default=1, metadata={"help": "Attention heads (KV groups with GQA) every layer keeps, whatever the target."}
    )
    uniform_widths: bool = field(
        default=False,
        metadata={
            "help": "Remove the same number of groups from every layer's heads / FFN / conv block, so that a stock "
            "config can describe the pruned model (the target is then met or exceeded by the smallest step)."
        },
    )
    dhspg_lambda_schedule: str = field(
        default="constant",
        metadata={
            "help": "'adaptive' raises lambda on the groups a linear ramp of the zero count still lacks, so groups "
            "reach zero progressively instead of at the deadline; 'constant' is OTOv2's rule."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"`target_sparsity` must be in [0, 1), got {self.target_sparsity}.")
        if self.sparsity_budget not in BUDGETS:
            raise ValueError(f"`sparsity_budget` must be one of {list(BUDGETS)}, got {self.sparsity_budget!r}.")
        unknown = [kind for kind in self.prune_kinds if kind not in GROUP_KINDS]
        if unknown or not self.prune_kinds:
            raise ValueError(f"`prune_kinds` must be a non-empty subset of {list(GROUP_KINDS)}, got {self.prune_kinds}.")
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
        """`(partition_step, pruning_end)` in optimizer steps for a run of `num_training_steps`."""
        partition = self.partition_steps or int(self.partition_ratio * num_training_steps)
        end = self.pruning_end_steps or max(int(self.pruning_end_ratio * num_training_steps), partition + 1)
        if end <= partition:
            raise ValueError(
                f"The pruning schedule is empty: partition step {partition}, pruning end {end} (training has "
                f"{num_training_steps} steps). Set `pruning_end_steps` after `partition_steps`."
            )
        if end > num_training_steps:
            raise ValueError(
                f"`pruning_end` ({end}) is after the last training step ({num_training_steps}); the target would "
                "never be reached. Lower `pruning_end_steps` or train longer."
            )
        return partition, end
