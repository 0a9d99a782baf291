"""DHSPG (OTOv2's Dual Half-Space Projected Gradient) as a `torch.optim.Optimizer`, vectorised over packed groups.

This module is longer than our ~400-line guideline because it holds one algorithm: the class docstring is its contract
(about 180 lines: the three phases, the progressive schedule, the exact budget rule, the family constraints and the
arguments), the step orchestrates the phases, and some 25 read-only accessors report progress. The pieces with a job of
their own live beside it: `base_steps` (SGD/Adam/AdamW), `packed_index` (segmented reductions), `group_stats`,
`penalty`, `events` (partition and deadline), `progressive`, `selection`, `families`, `group_state`, `sharding` (FSDP2
and rank agreement), `deprecations` and `checks`.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer

from . import base_steps
from .checks import check_at_least, check_choice, check_int, check_range
from .deprecations import renamed_kwargs
from .events import choose_redundant_set, deadline_projection, mark_next_quota
from .families import MIN_KEPT_ARGUMENTS, FamilyConstraints, GroupFamily
from .group_state import GroupState
from .group_stats import Scratch, importance_rows, importance_statistics, pruning_statistics
from .packed_index import GroupIndex, extend
from .penalty import LambdaRule, penalise
from .selection import Budget, importance_scores, redundancy_scores, resolve_budget
from .sharding import from_first_rank, local

if TYPE_CHECKING:
    from torch.optim.optimizer import ParamsT

    from oto_hf.graph.groups import ZeroInvariantGroup


logger = logging.getLogger(__name__)

# Reference defaults of the legacy OTOv2 code: (lambda, amplify, cap) per base optimizer.
LAMBDA_DEFAULTS: dict[str, tuple[float, float, float]] = {
    "sgd": (1e-3, 2.0, 10.0),
    "adam": (1e-2, 20.0, 1000.0),
    "adamw": (1e-2, 20.0, 1000.0),
}
# "progressive": quotas of groups driven to zero along planned trajectories (default); "constant": OTOv2's lambdas.
LAMBDA_SCHEDULES: tuple[str, ...] = ("progressive", "constant")
# "fisher": loss-based importance per unit of cost (default); "otov2": OTOv2's cosine and magnitude mix.
SALIENCIES: tuple[str, ...] = ("fisher", "otov2")


class DHSPG(Optimizer):
    r"""OTOv2's Dual Half-Space Projected Gradient, driving groups to exactly zero progressively, with an exact target.

    Training runs in three phases, counted in calls to `step()`:

    1. **warmup** (steps `[0, partition_steps)`): every parameter takes the base step (`"sgd"` with momentum, `"adam"`
       or `"adamw"`, equal to the matching `torch.optim` class step for step).
    2. **pruning** (steps `[partition_steps, pruning_end_steps)`): at each partition step the groups are scored and
       the most redundant ones, covering `target + tolerance` of the budget, form the redundant set. The default score
       (`saliency="fisher"`) is a loss-based importance per unit of the budget's cost: the mean of `<x_g, grad_g>^2`
       over the steps since the last partition (over the period before the first one), so that heads and neurons
       compete on one scale. Important groups and parameters outside all groups take the base step. Redundant groups
       take `x_g - lr * (d_g + lambda_g * x_g / ||x_g||)`, with `lambda_g` adapted per group and step so that the step
       shrinks the group while staying a descent direction, and are projected to zero when the trial point leaves the
       half-space `<x_hat_g, x_g> >= epsilon * ||x_g||^2`. Projections never exceed the target. Once it is reached
       the penalty stops.
    3. **recovery** (steps `>= pruning_end_steps`): base steps; zero groups stay exactly zero, weights and optimizer
       state (the state of zero groups is cleared at the deadline; before it, their updates are masked).

    **Progressive schedule** (`lambda_schedule="progressive"`, the default). The window is split into
    `num_partition_periods` periods. At the start of each, the next quota of redundant groups, by score, becomes
    *due*, so that due and zero groups cover `(k + 1) / P` of the target after period `k` (the last period takes the
    rest of the target by the deadline rule below). Each due group's `lambda_g` is raised, step by step, to the value
    that makes its norm follow a linear ramp to zero by the end of its period (learning rate, group size and weight
    scale cancel out), and the half-space test (threshold 0.05 for due groups) projects it at the ramp's end. So the
    groups reach zero through the optimizer's own steps, one quota per period. With `"constant"`, OTOv2's rule alone
    (constant `lambda_`, amplified lower bound, cap) decides; with Adam learning rates it rarely projects a group, and
    the deadline then does the pruning (for parity studies: `lambda_schedule="constant", saliency="otov2"`).

    **Deadline, a safety net.** In the last pruning step (`pruning_end_steps - 1`) the groups still missing are
    projected: the non-zero redundant groups with the highest redundancy score first, then the other groups. These
    *forced* zeros are counted (`num_forced_zero_groups`); a warning is logged when they exceed 1% of the target, since
    a group projected with most of its norm left is one-shot pruning, not OTO.

    **Budgets and the exact rule.** With `sparsity_budget="groups"` (default), exactly `round(target_sparsity *
    num_groups)` groups (rounding half up; with `uniform_widths`, the planned count below) are zero after
    `pruning_end_steps` steps. With `"params"` or `"flops"`, each group has a cost (its `num_params`, or `group_costs`)
    and the removed fraction is `sum(cost of zero groups) / budget_total`. In the pruning phase the removed cost never
    exceeds `target_sparsity * budget_total`. At the deadline the remaining candidates (redundant groups by decreasing
    redundancy score, then the others) are added in that order whenever they still fit under the target; if the removed
    cost is still below the target, the cheapest remaining candidate is added. So the removed cost ends at or above the
    target, and above it by less than the cost of the group that closed the gap, which is the cheapest group left
    (whose family may still lose one, under the per-layer minimums). A target above what all groups together cost
    raises a `ValueError` at construction.

    **Family constraints.** A *family* is the set of groups that slice the same tensors (key: the sorted `(name, dim)`
    pairs of a group's slices), e.g. the heads of one layer or the neurons of one FFN; see `families`.
    `min_heads_per_layer`, `min_neurons_per_layer` and `min_channels_per_layer` bound the zero groups of each family at
    every step (redundant set, projections, deadline). `uniform_widths` fixes the number of zero groups of every family
    at construction and fills each family to exactly that number at the deadline, with its least salient groups
    (redundant ones first); no step exceeds it. The rule: families of one kind and size `n` form a class; steps "a
    `k`-th zero group in every family of the class" are taken in order of the width fraction `k / n` (ties: the class
    whose groups come first), within the per-layer minimums, until the removed cost reaches the target (a cost budget
    counts the `k`-th cheapest group of each family). So all classes lose about the same fraction of their width, and
    the planned total is the first one at or above the target along that path, above it by less than the last step.
    With `sparsity_budget="groups"` and as many families in every class (e.g. heads and FFN neurons of every layer) it
    is the smallest count at or above `round(target_sparsity * num_groups)` that uniform widths allow; it is
    `target_num_zero_groups` and the families' `max_zero`. A target the constraints make unreachable raises a
    `ValueError` at construction.

    Every step uses a few segmented reductions over all groups and no Python loop over groups; the only host
    synchronisations happen at partition steps and at the deadline. All grouped parameters must sit on one device
    and `lr` must be a Python float. During a pruning step the base direction of every grouped parameter is held
    until all group statistics are reduced; it is written into the parameter's gradient once the gradient has been
    read, so the step allocates nothing of the weights' size, and **after a pruning step `param.grad` of a grouped
    parameter holds that direction, not the gradient** (zero the gradients before the next backward pass, as usual).

    With FSDP2 (`fully_shard`) every rank steps its own shards, and each step's group statistics are completed by one
    `all_reduce` over the mesh; see `oto_hf.optim.sharding`.

    Args:
        params (`Iterable[torch.Tensor]` or `Iterable[dict]`):
            parameters or parameter groups, as for any `torch.optim.Optimizer`, e.g. the decay and no-decay groups
            built by `transformers.Trainer`. Each dict may override `lr`, `weight_decay`, `betas`, `eps`, `momentum`,
            `dampening` and `nesterov`. A prunable group may span parameters of different parameter groups.
        groups (`Sequence[ZeroInvariantGroup]`):
            the zero-invariant groups, e.g. a `GroupSet`; group `i` must sit at position `i`.
        named_parameters (`Mapping[str, torch.Tensor]` or `Iterable[tuple[str, torch.Tensor]]`):
            name to parameter for every parameter the groups slice, e.g.
            `dict(model.named_parameters(remove_duplicate=False))`.
        lr (`float`, *optional*, defaults to `1e-3`): learning rate.
        variant (`str`, *optional*, defaults to `"adamw"`): base optimizer, `"sgd"`, `"adam"` or `"adamw"`.
        betas (`tuple[float, float]`, *optional*, defaults to `(0.9, 0.999)`): Adam moment coefficients.
        eps (`float`, *optional*, defaults to `1e-8`): Adam denominator term.
        weight_decay (`float`, *optional*, defaults to `0.0`): decoupled for `"adamw"`, L2 for `"adam"` and `"sgd"`.
        momentum (`float`, *optional*, defaults to `0.9`): SGD momentum.
        dampening (`float`, *optional*, defaults to `0.0`): SGD dampening.
        nesterov (`bool`, *optional*, defaults to `False`): SGD Nesterov momentum.
        target_sparsity (`float`, *optional*, defaults to `0.5`):
            fraction to remove, in `[0, 1)`; `0` disables pruning.
        sparsity_budget (`str`, *optional*, defaults to `"groups"`):
            what `target_sparsity` counts: `"groups"`, `"params"` (parameters of the groups) or `"flops"`.
        group_costs (`Sequence[float]` or `torch.Tensor`, *optional*):
            cost of each group for `sparsity_budget="flops"` (`oto_hf.group_flop_costs` measures them); defaults to
            the groups' `num_params`.
        budget_total (`float`, *optional*):
            denominator of the removed fraction for `"params"`/`"flops"` (e.g. the whole model's parameters or FLOPs);
            defaults to the total cost of all groups.
        partition_steps (`int`, *optional*, defaults to `0`): warm-up steps before the first partition.
        pruning_end_steps (`int`): steps after which the target is met exactly; must exceed `partition_steps`.
        num_partition_periods (`int`, *optional*):
            re-score the groups, re-choose the redundant set and (progressive schedule) mark the next quota due this
            many times, evenly spaced from `partition_steps` (see `partition_points`); zero groups stay zero and stay
            redundant. Defaults to `5` with the progressive schedule, `1` with the constant one.
        lambda_ (`float`, *optional*): base penalty; defaults to `1e-3` for `"sgd"`, `1e-2` for Adam variants.
        lambda_amplify (`float`, *optional*): factor on the lower bound; defaults to `2` (`"sgd"`) or `20` (Adam).
        lambda_cap (`float`, *optional*): `lambda_g <= lambda_ * lambda_cap`; defaults to `10` (`"sgd"`) or `1000`
            (Adam).
        epsilon (`float`, *optional*, defaults to `0.0`): half-space projection threshold, in `[0, 1)`.
        final_epsilon (`float`, *optional*):
            if set, epsilon ramps linearly from `epsilon` at the first partition step to this value at the deadline,
            making projections easier as the deadline nears; defaults to a constant `epsilon`.
        tolerance (`float`, *optional*, defaults to `0.05`): the redundant set covers `target + tolerance`.
        saliency (`str`, *optional*, defaults to `"fisher"`):
            how groups are ranked: `"fisher"` (importance per unit of cost, above) or `"otov2"` (OTOv2's mix of
            `cos(x_g, d_g)` and `1 / avg|x_g|`, each min-max normalised, blind to cost).
        importance_window (`int`, *optional*):
            with `saliency="fisher"`, the warm-up steps whose gradients score the groups at the first partition;
            defaults to one period.
        saliency_cosine_weight (`float`, *optional*, defaults to `0.5`):
            with `saliency="otov2"`, the weight of the cosine term.
        saliency_magnitude_weight (`float`, *optional*, defaults to `0.5`):
            with `saliency="otov2"`, the weight of the inverse-magnitude term.
        min_heads_per_layer (`int`, *optional*, defaults to `0`):
            heads that stay non-zero in every family of heads (a layer's attention), always, e.g. `1` so that no layer
            loses all its heads. A family of at most that many groups is never pruned. With a cost budget, the
            reachability check counts each family's cheapest removable groups.
        min_neurons_per_layer (`int`, *optional*, defaults to `0`): the same for FFN neurons (a layer may lose its
            whole FFN: the block then adds its output bias only).
        min_channels_per_layer (`int`, *optional*, defaults to `1`): the same for conv channels.
        max_family_sparsity (`float`, *optional*, defaults to `1.0`):
            most of each family's groups that may be zero, in `(0, 1]`, e.g. `0.9` so that no layer loses more than
            90% of its heads or neurons (rounded down to whole groups).
        never_empty (`Sequence[tuple]`, *optional*):
            family keys (see `families`) that always keep at least one group, e.g. the families whose removal
            disconnects the output from the input (`oto_hf.bottleneck_families` finds them).
        uniform_widths (`bool`, *optional*, defaults to `False`):
            from `pruning_end_steps` on, every family of the same kind and size has the same number of zero groups (the
            rule above), so a stock config can describe the pruned model. The removed cost ends at or above the
            target. Each family's redundant set is its `max_zero` least salient groups plus `round(tolerance * size)`.
        lambda_schedule (`str`, *optional*, defaults to `"progressive"`):
            `"progressive"` (quotas driven to zero along planned trajectories, see above) or `"constant"` (OTOv2's
            per-group lambdas alone).
        foreach (`bool`, *optional*):
            take the base steps with `torch._foreach_*` ops, as `torch.optim` does with `foreach=True`; defaults to
            `True` when every parameter is on a CUDA device (`torch.optim`'s default), else `False`.
        sync_ranks (`bool`, *optional*, defaults to `True`):
            when a `torch.distributed` process group is initialised, take every decision (redundant set, due ramps,
            zero mask) from rank 0 with one broadcast per pruning step, so that ranks can never disagree on which
            groups are zero (CUDA reductions are not deterministic). Turn it off only when the ranks train different
            models.

    Example:

    ```python
    >>> from oto_hf.optim import DHSPG
    >>> optimizer = DHSPG.from_model(model, groups, lr=1e-4, target_sparsity=0.3, partition_steps=100,
    ...     pruning_end_steps=1000)
    >>> for batch in loader:
    ...     model(**batch).loss.backward()
    ...     optimizer.step()
    ...     optimizer.zero_grad()
    >>> optimizer.group_sparsity()
    0.3
    ```

    Keep at least one head per layer and prune to uniform widths:

    ```python
    >>> optimizer = DHSPG.from_model(
    ...     model, groups, lr=1e-4, target_sparsity=0.5, pruning_end_steps=1000,
    ...     min_heads_per_layer=1, uniform_widths=True,
    ... )
    >>> [(family.kind, family.size, family.max_zero) for family in optimizer.families][:2]
    [('head', 12, 6), ('neuron', 3072, 1536)]
    ```
    """

    def __init__(
        self,
        params: ParamsT,
        groups: Sequence[ZeroInvariantGroup],
        named_parameters: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
        lr: float = 1e-3,
        *,
        variant: str = "adamw",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        dampening: float = 0.0,
        nesterov: bool = False,
        target_sparsity: float = 0.5,
        sparsity_budget: str = "groups",
        group_costs: Sequence[float] | torch.Tensor | None = None,
        budget_total: float | None = None,
        partition_steps: int = 0,
        pruning_end_steps: int | None = None,
        num_partition_periods: int | None = None,
        lambda_: float | None = None,
        lambda_amplify: float | None = None,
        lambda_cap: float | None = None,
        epsilon: float = 0.0,
        final_epsilon: float | None = None,
        tolerance: float = 0.05,
        saliency: str = "fisher",
        importance_window: int | None = None,
        saliency_cosine_weight: float = 0.5,
        saliency_magnitude_weight: float = 0.5,
        min_heads_per_layer: int = 0,
        min_neurons_per_layer: int = 0,
        min_channels_per_layer: int = 1,
        max_family_sparsity: float = 1.0,
        never_empty: Sequence[tuple] = (),
        uniform_widths: bool = False,
        lambda_schedule: str = "progressive",
        foreach: bool | None = None,
        sync_ranks: bool = True,
        **deprecated: Any,
    ) -> None:
        if deprecated:
            given = {k: v for k, v in locals().items() if k in _DEFAULTS}
            DHSPG.__init__(self, params, groups, named_parameters, lr, **renamed_kwargs(deprecated, given, _DEFAULTS))
            return
        minimums = {"head": min_heads_per_layer, "neuron": min_neurons_per_layer, "channel": min_channels_per_layer}
        for kind, value in minimums.items():
            check_int(MIN_KEPT_ARGUMENTS[kind], value, 0)
        if pruning_end_steps is None:
            raise TypeError("DHSPG needs `pruning_end_steps`: the number of steps after which the target is met.")
        check_choice("variant", variant, base_steps.VARIANTS)
        check_range("target_sparsity", target_sparsity, 0.0, 1.0)
        check_range("tolerance", tolerance, 0.0, 1.0)
        check_range("epsilon", epsilon, 0.0, 1.0)
        if final_epsilon is not None:
            check_range("final_epsilon", final_epsilon, 0.0, 1.0)
        check_int("partition_steps", partition_steps, 0)
        check_int(
            "pruning_end_steps",
            pruning_end_steps,
            partition_steps + 1,
            f"greater than `partition_steps` ({partition_steps})",
        )
        check_choice("lambda_schedule", lambda_schedule, LAMBDA_SCHEDULES)
        check_choice("saliency", saliency, SALIENCIES)
        window = pruning_end_steps - partition_steps
        if num_partition_periods is None:
            num_partition_periods = min(5, window) if lambda_schedule == "progressive" else 1
        check_int(
            "num_partition_periods",
            num_partition_periods,
            1,
            f"in [1, pruning_end_steps - partition_steps] = [1, {window}]",
            high=window,
        )
        default_lambda, default_amplify, default_cap = LAMBDA_DEFAULTS[variant]
        self._lambda_rule = LambdaRule(
            default_lambda if lambda_ is None else lambda_,
            default_amplify if lambda_amplify is None else lambda_amplify,
            default_cap if lambda_cap is None else lambda_cap,
        )
        check_at_least("lambda_", self._lambda_rule.lambda_, 0.0, "> 0")
        check_at_least("lambda_amplify", self._lambda_rule.lambda_amplify, 1.0, ">= 1")
        check_at_least("lambda_cap", self._lambda_rule.lambda_cap, 1.0, ">= 1")
        weights = (saliency_cosine_weight, saliency_magnitude_weight)
        if not all(isinstance(w, (int, float)) and 0 <= w < float("inf") for w in weights) or sum(weights) == 0:
            raise ValueError(
                "`saliency_cosine_weight` and `saliency_magnitude_weight` must be non-negative numbers, not both "
                f"zero, got {weights!r}."
            )

        self.variant = variant
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            momentum=momentum, dampening=dampening, nesterov=nesterov,
        )  # fmt: skip
        super().__init__(params, defaults)

        if not isinstance(named_parameters, Mapping):
            named_parameters = dict(named_parameters)
        optimizer_params = [p for group in self.param_groups for p in group["params"]]
        self._group_list = groups
        self._foreach_choice = foreach
        self._bind(named_parameters, optimizer_params)
        num_params = [
            getattr(g, "num_params", 0) or int(n) for g, n in zip(groups, self._index.group_numel, strict=True)
        ]
        self._budget: Budget = resolve_budget(
            sparsity_budget, target_sparsity, tolerance, num_params, group_costs, budget_total
        )
        device = self._index.device
        self._families = FamilyConstraints(
            groups,
            minimums,
            uniform_widths,
            self._budget,
            tolerance,
            max_family_sparsity=max_family_sparsity,
            never_empty=never_empty,
        ).to(device)
        if self._families.constrained and uniform_widths and self._budget.kind == "groups":
            # Uniform widths may need a few more zero groups than round(target * N): the planned count is the target.
            planned = float(sum(family.max_zero for family in self._families.families))
            self._budget = Budget(self._budget.kind, self._budget.costs, self._budget.total, planned, planned)
        self._costs = self._budget.costs.to(device)
        self._numel = self._index.group_numel

        self.target_sparsity = target_sparsity
        self.sparsity_budget = sparsity_budget
        self._partition_steps = partition_steps
        self._pruning_end_steps = pruning_end_steps
        period = window // num_partition_periods
        self._partition_points = tuple(partition_steps + i * period for i in range(num_partition_periods))
        self._epsilon = epsilon
        self._final_epsilon = epsilon if final_epsilon is None else final_epsilon
        self._saliency_weights = (float(saliency_cosine_weight), float(saliency_magnitude_weight))
        self.saliency = saliency
        self.uniform_widths = uniform_widths
        self.lambda_schedule = lambda_schedule
        self.sync_ranks = sync_ranks
        # Importance is accumulated over the pruning steps and over the period before the first partition.
        if importance_window is not None:
            check_int("importance_window", importance_window, 1)
        self._importance_from = max(0, partition_steps - (importance_window or period))

        # Run state (all in `state_dict()`).
        num_groups = self._index.num_groups
        self._num_steps = 0
        self._groups = GroupState.initial(num_groups, self._families, device)
        self._lambda = torch.zeros(num_groups, dtype=torch.float32, device=device)
        self._final_num_zero_groups: int | None = None
        self._importance = torch.zeros(num_groups, dtype=torch.float32, device=device)
        self._importance_steps = 0
        self._num_forced = 0

    def _bind(self, named_parameters: Mapping[str, torch.Tensor], optimizer_params: list[torch.Tensor]) -> None:
        """Index the grouped parameters among `optimizer_params` (also the local shards of FSDP2 `DTensor`s)."""
        self._index = GroupIndex(self._group_list, named_parameters, optimizer_params)
        self._position = {id(p): i for i, p in enumerate(self._index.params)}
        grouped = set(self._position)
        self._grouped_names = {name: p for name, p in named_parameters.items() if id(p) in grouped}
        self._bound = optimizer_params
        # torch.optim's default: the multi-tensor path when every parameter is on a CUDA device.
        choice = self._foreach_choice
        self.foreach = all(p.is_cuda for p in optimizer_params) if choice is None else bool(choice)
        self._scratch = Scratch(limit=max((local(p).numel() for p in self._index.params), default=0))

    def _follow_replaced_parameters(self) -> None:
        """Re-index when the parameter groups hold other tensors than at construction.

        `accelerate` does this with FSDP2: `Trainer` builds the optimizer first, then `prepare` shards the model and
        swaps each optimizer parameter for its sharded `DTensor`, in place and in order (accelerate 1.15,
        `fsdp2_switch_optimizer_parameters`). Group state stays; parameters added by `add_param_group` are ignored.
        """
        current = [p for group in self.param_groups for p in group["params"]][: len(self._bound)]
        if all(a is b for a, b in zip(current, self._bound)):
            return
        if self.state:
            raise RuntimeError(
                "DHSPG's parameters were replaced after it took steps; replace them before the first step (as "
                "accelerate's prepare does)."
            )
        replaced = {id(old): new for old, new in zip(self._bound, current)}
        self._bind({name: replaced[id(p)] for name, p in self._grouped_names.items()}, current)
        device = self._index.device  # prepare may also have moved the model, e.g. to its GPU
        if device != self._costs.device:
            self._families = self._families.to(device)
            self._groups = self._groups.to(device)
            self._lambda, self._importance, self._costs = (
                t.to(device) for t in (self._lambda, self._importance, self._costs)
            )

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        groups: Sequence[ZeroInvariantGroup],
        *,
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> DHSPG:
        """Build a DHSPG over every trainable parameter of `model`.

        Parameters with fewer than two dims (biases, norm weights) go to a parameter group without weight decay, as in
        `transformers.Trainer`; the others get `weight_decay`. The other keyword arguments are those of `DHSPG`.

        Example:

        ```python
        >>> optimizer = DHSPG.from_model(model, groups, lr=3e-4, weight_decay=0.01, pruning_end_steps=500)
        ```
        """
        trainable = [p for p in model.parameters() if p.requires_grad]
        params: list[dict[str, Any]] = [
            {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
        ]
        params = [group for group in params if group["params"]]
        return cls(params, groups, model.named_parameters(remove_duplicate=False), weight_decay=weight_decay, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group after checking its hyperparameters; groups added after construction are not pruned."""
        super().add_param_group(param_group)
        base_steps.check_hyperparameters(self.param_groups[-1], len(self.param_groups) - 1)

    # ------------------------------------------------------------------ progress (read-only)

    @property
    def num_groups(self) -> int:
        """Number of prunable groups."""
        return self._index.num_groups

    @property
    def num_steps(self) -> int:
        """Calls to `step()` so far."""
        return self._num_steps

    @property
    def phase(self) -> str:
        """Phase of the next step: `"warmup"`, `"pruning"` or `"recovery"`."""
        if self._num_steps < self._partition_steps:
            return "warmup"
        return "pruning" if self._num_steps < self._pruning_end_steps else "recovery"

    @property
    def partition_points(self) -> tuple[int, ...]:
        """Steps (0-based counts of earlier `step()` calls) at which groups are scored and the redundant set chosen."""
        return self._partition_points

    @property
    def partition_steps(self) -> tuple[int, ...]:
        """Deprecated name of `partition_points` (`partition_steps` now names the warm-up steps, as in
        `OTOTrainingArguments`)."""
        warnings.warn(
            "`DHSPG.partition_steps` is renamed `partition_points`; `partition_steps` is now the keyword argument for "
            "the warm-up steps, as in `OTOTrainingArguments`.",
            FutureWarning,
            stacklevel=2,
        )
        return self._partition_points

    @property
    def budget(self) -> str:
        """Deprecated name of `sparsity_budget`."""
        warnings.warn("`DHSPG.budget` is renamed `sparsity_budget`.", FutureWarning, stacklevel=2)
        return self.sparsity_budget

    @property
    def pruning_end(self) -> int:
        """Deprecated name of `pruning_end_steps`."""
        warnings.warn("`DHSPG.pruning_end` is renamed `pruning_end_steps`.", FutureWarning, stacklevel=2)
        return self._pruning_end_steps

    @property
    def pruning_end_steps(self) -> int:
        """Number of steps after which exactly the target is zero."""
        return self._pruning_end_steps

    @property
    def target_num_zero_groups(self) -> int | None:
        """Groups zero from `pruning_end_steps` on: known upfront for `sparsity_budget="groups"` or with
        `uniform_widths`, else once the deadline passed."""
        if self._families.constrained and self.uniform_widths:
            return sum(family.max_zero for family in self._families.families)
        if self._budget.kind == "groups":
            return int(self._budget.target_cost)
        if not self._budget.active:
            return 0
        return self._final_num_zero_groups

    @property
    def families(self) -> tuple[GroupFamily, ...]:
        """The families (groups that share tensors, e.g. the heads of one layer) with their constraints; read-only."""
        return self._families.families

    @property
    def importance(self) -> torch.Tensor:
        """Per group, the mean of `<x_g, grad_g>^2` over the steps since the last partition (the Fisher estimate of
        the loss increase from zeroing it; accumulated with `saliency="fisher"`); a copy."""
        return self._importance / max(self._importance_steps, 1)

    @property
    def num_forced_zero_groups(self) -> int:
        """Groups the deadline projected because the optimizer's steps had not zeroed them (0 before the deadline)."""
        return self._num_forced

    def due_group_ids(self) -> list[int]:
        """Ids of the groups whose ramp to zero has started (progressive schedule), zero ones included."""
        return torch.nonzero(self._groups.due).flatten().tolist()

    def family_zero_counts(self) -> list[int]:
        """Number of zero groups in each family, in `families` order (reads values back from the device)."""
        return self._families.zero_counts(self._groups.zero).tolist()

    @property
    def lambdas(self) -> torch.Tensor:
        """Per-group lambda of the last pruning step (zero outside the penalised redundant groups); a copy."""
        return self._lambda.clone()

    def num_zero_groups(self) -> int:
        """Number of groups that are zero now (reads a value back from the device)."""
        return int(self._groups.zero.sum())

    def group_sparsity(self) -> float:
        """Fraction of groups that are zero now (reads a value back from the device)."""
        return self.num_zero_groups() / self.num_groups if self.num_groups else 0.0

    def removed_fraction(self) -> float:
        """Removed fraction in the budget's unit: zero cost over `budget_total` (`group_sparsity` for groups)."""
        removed = float((self._costs * self._groups.zero).sum())
        return removed / self._budget.total if self._budget.total else 0.0

    def zero_group_ids(self) -> list[int]:
        """Ids of the zero groups, e.g. for `construct_subnet`."""
        return torch.nonzero(self._groups.zero).flatten().tolist()

    def redundant_group_ids(self) -> list[int]:
        """Ids of the current redundant set (empty before the first partition step)."""
        return torch.nonzero(self._groups.redundant).flatten().tolist()

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Take one optimisation step (see the class docstring for what each phase does).

        Args:
            closure (`Callable`, *optional*): re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._follow_replaced_parameters()
        step = self._num_steps
        if not self._budget.active or step < self._partition_steps:
            if self._budget.active and self.saliency == "fisher" and step >= self._importance_from:
                params, grads = self._local_tensors()
                self._accumulate_importance(importance_statistics(self._index, params, grads, self._scratch))
            self._base_step(masked=False)
        elif step < self._pruning_end_steps:
            self._pruning_step(step)
        else:
            self._base_step(masked=True)
        self._num_steps += 1
        return loss

    def _local_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """The local shards of the grouped parameters and of their gradients, in `self._index.params` order."""
        params = self._index.params
        return [local(p) for p in params], [None if p.grad is None else local(p.grad) for p in params]

    def _with_grads(self, group: dict[str, Any]) -> Iterator[tuple[int | None, torch.Tensor, torch.Tensor, dict]]:
        """`(position among the grouped parameters or None, local parameter, local gradient, state)` of every
        parameter of `group` that has a gradient, its state created if needed."""
        for param in group["params"]:
            if param.grad is not None:
                state = self.state[param]
                base_steps.init_state(self.variant, param, state)
                yield self._position.get(id(param)), local(param), local(param.grad), state

    def _base_step(self, masked: bool) -> None:
        keep = extend((~self._groups.zero).float(), 1.0) if masked else None
        for group in self.param_groups:
            params, grads, states = [], [], []
            for position, param, grad, state in self._with_grads(group):
                if keep is not None and position is not None:
                    # Zero gradients keep the weights and the state of zero groups exactly zero.
                    grad = grad * self._expand(keep, position, torch.mul).to(grad.dtype)
                params.append(param)
                grads.append(grad)
                states.append(state)
            base_steps.update(self.variant, params, grads, states, group, self.foreach, self._scratch.like)

    def _accumulate_importance(self, xg: torch.Tensor) -> None:
        """Add `<x_g, grad_g>^2` (the squared gradient of a mask on each group) to the running importance."""
        self._importance += xg.square()
        self._importance_steps += 1

    def _scores(self, stats: dict[str, torch.Tensor], zero: torch.Tensor) -> torch.Tensor:
        """Redundancy scores (high: remove first) by the chosen saliency; on the CPU."""
        if self.saliency == "fisher":
            return importance_scores(self.importance, self._costs, zero)
        return redundancy_scores(stats, self._numel, zero, self._saliency_weights)

    def _pruning_step(self, step: int) -> None:
        partition = step in self._partition_points
        deadline = step == self._pruning_end_steps - 1
        params, grads = self._local_tensors()
        fisher = self.saliency == "fisher"
        # <x, grad> first: the directions then overwrite the gradients of grouped parameters.
        importance = importance_rows(self._index, params, grads, self._scratch) if fisher else None
        num = len(params)
        directions: list[torch.Tensor | None] = [None] * num
        decays, lrs = [0.0] * num, [0.0] * num
        for group in self.param_groups:
            plain: tuple[list, list, list] = ([], [], [])
            grouped: tuple[list, list, list] = ([], [], [])
            positions = []
            for position, param, grad, state in self._with_grads(group):
                target = plain if position is None else grouped
                if position is not None:
                    positions.append(position)
                target[0].append(param)
                target[1].append(grad)
                target[2].append(state)
            base_steps.update(self.variant, *plain, group, self.foreach, self._scratch.like)
            consume = all(_can_hold_direction(g, p) for p, g in zip(grouped[0], grouped[1]))
            group_directions, decay = base_steps.directions(
                self.variant, *grouped, group, self.foreach, consume_grads=consume
            )
            for position, direction in zip(positions, group_directions, strict=True):
                directions[position], decays[position], lrs[position] = direction, decay, group["lr"]

        stats = pruning_statistics(
            self._index,
            params,
            directions,
            decays,
            lrs,
            importance=importance,
            with_l1=partition or deadline,
            scratch=self._scratch,
        )
        if fisher:
            self._accumulate_importance(stats["xg"])
        if partition:
            self._partition(stats, step)
        zero, coef, self._lambda = penalise(
            stats,
            self._groups,
            self._lambda_rule,
            self._budget,
            self._costs,
            self._families,
            self.lambda_schedule == "progressive",
            self._epsilon_at(step),
            step,
        )
        if deadline:
            scores = self._scores(stats, zero)
            chosen = deadline_projection(
                zero, scores, self._groups.redundant, self._families, self._budget, self.sync_ranks, step
            )
            zero = zero | chosen
            self._num_forced = int(chosen.sum())
            self._final_num_zero_groups = int(zero.sum())
        if self.sync_ranks:
            (zero,) = from_first_rank(zero)
        self._groups.zero = zero

        keep = extend((~zero).float(), 1.0)
        coef = extend(coef, 0.0)
        for position, (param, d, decay, lr) in enumerate(zip(params, directions, decays, lrs)):
            keep_p = self._expand(keep, position, torch.mul).to(param.dtype)
            if d is None:
                param.mul_(keep_p)
                continue
            # x <- keep * ((1 - lr * (decay + lambda_g / ||x_g||)) * x - lr * d)
            # In float32: 1 - lr * coef must not round to 1 in a low-precision dtype before it multiplies x.
            scale = self._expand(coef, position, torch.add).add(decay).mul_(-lr).add_(1).mul_(keep_p)
            param.mul_(scale).addcmul_(d, keep_p, value=-lr)
        if deadline:
            # The state of zero groups is cleared once, when the zero set is final; before, their updates are masked.
            for position, param in enumerate(self._index.params):
                keep_p = self._expand(keep, position, torch.mul)
                for tensor in base_steps.state_tensors(self.state[param]):
                    tensor.mul_(keep_p.to(tensor.dtype))

    def _partition(self, stats: dict[str, torch.Tensor], step: int) -> None:
        """Re-score, re-choose the redundant set and, with the progressive schedule, mark the next quota due."""
        scores = self._scores(stats, self._groups.zero)
        redundant, priority = choose_redundant_set(
            self._groups, scores, self._families, self._budget, self.sync_ranks, step
        )
        self._importance.zero_()
        self._importance_steps = 0
        if self.lambda_schedule != "progressive":
            return
        points = self._partition_points
        period = points.index(step)
        last = period == len(points) - 1
        mark_next_quota(
            self._groups,
            scores,
            redundant,
            priority,
            self._families,
            self._budget,
            stats["xx"].sqrt(),
            period=period,
            num_periods=len(points),
            step=step,
            ramp_end=self._pruning_end_steps - 1 if last else points[period + 1] - 1,
            uniform_widths=self.uniform_widths,
            sync=self.sync_ranks,
        )

    def _epsilon_at(self, step: int) -> float:
        span = max(1, self._pruning_end_steps - 1 - self._partition_steps)
        progress = min(1.0, (step - self._partition_steps) / span)
        return self._epsilon + (self._final_epsilon - self._epsilon) * progress

    def _expand(self, per_group: torch.Tensor, position: int, combine: Callable) -> torch.Tensor:
        """Broadcastable per-element view of a per-group vector for the parameter at `position`, axes combined."""
        axes = self._index.axes[position]
        out = axes[0].expand(per_group)
        for axis in axes[1:]:
            out = combine(out, axis.expand(per_group))
        return out

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """The `torch.optim` state dict plus a `"dhspg"` entry: step count, zero and redundant masks, priority order,
        last per-group lambdas, importance, ramps of due groups, forced count and the group count; plain Python values
        and tensors only, so it loads with `torch.load(path, weights_only=True)`."""
        state = super().state_dict()
        state["dhspg"] = {
            **self._groups.to_dict(),
            "num_steps": self._num_steps,
            "num_groups": self.num_groups,
            "lambda": self._lambda.clone(),
            "family_max_zero": self._families.max_zero.clone(),
            "final_num_zero_groups": self._final_num_zero_groups,
            "importance": self._importance.clone(),
            "importance_steps": self._importance_steps,
            "num_forced": self._num_forced,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state dict written by `state_dict()` of a DHSPG over the same parameters and groups."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("dhspg", None)
        if extra is None:
            raise ValueError("This state dict has no 'dhspg' entry: it was not written by `DHSPG.state_dict()`.")
        if extra["num_groups"] != self.num_groups:
            raise ValueError(
                f"The state dict is for {extra['num_groups']} groups, but this optimizer has {self.num_groups}."
            )
        max_zero = extra.get("family_max_zero")
        if max_zero is not None and not torch.equal(max_zero.cpu(), self._families.max_zero.cpu()):
            raise ValueError(
                "The state dict was written with other family quotas (the per-layer minimums, `uniform_widths` or "
                "`target_sparsity` differ); build the optimizer with the arguments of the saved run."
            )
        super().load_state_dict(state_dict)
        device = self._groups.zero.device
        self._groups = GroupState.from_dict(extra, self._families, device)
        self._num_steps = int(extra["num_steps"])
        self._lambda = extra["lambda"].to(device=device, dtype=torch.float32).clone()
        self._importance = extra["importance"].to(device=device, dtype=torch.float32).clone()
        self._importance_steps = int(extra["importance_steps"])
        self._num_forced = int(extra["num_forced"])
        self._final_num_zero_groups = extra["final_num_zero_groups"]

    def state_nbytes(self) -> int:
        """Bytes of all tensors this optimizer keeps between steps: per-parameter state, group state, the index and the
        scratch buffer of the statistics."""
        per_param = sum(
            local(value).numel() * local(value).element_size()
            for state in self.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor)
        )
        per_group = self._groups.nbytes() + sum(
            t.numel() * t.element_size() for t in (self._lambda, self._importance, self._costs)
        )
        return per_param + per_group + self._index.index_nbytes() + self._scratch.nbytes()


# Defaults of the keyword arguments, to tell an argument that was passed from one left at its default.
_DEFAULTS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(DHSPG.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}


def _can_hold_direction(grad: torch.Tensor, param: torch.Tensor) -> bool:
    """Whether a gradient's storage can take its parameter's step direction (it is read before being overwritten)."""
    return grad.is_contiguous() and grad.shape == param.shape and grad.dtype == param.dtype
