"""DHSPG (OTOv2's Dual Half-Space Projected Gradient) as a `torch.optim.Optimizer`, vectorised over packed groups."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer

from ..graph.groups import GROUP_KINDS
from . import base_steps
from .families import FamilyConstraints, GroupFamily
from .group_ops import (
    Budget,
    GroupIndex,
    cap_projections,
    choose_redundant,
    deadline_selection,
    extend,
    importance_scores,
    redundancy_scores,
    resolve_budget,
)
from .progressive import DUE_EPSILON, mark_due, planned_lambda

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
_TINY = 1e-30
# Per-group statistics of a pruning step; `xg` (<x, grad>) only with the Fisher saliency, `l1` only at partition and
# deadline steps.
_STAT_KEYS = ("xx", "xd", "dd", "axx", "axd")


class DHSPG(Optimizer):
    r"""OTOv2's Dual Half-Space Projected Gradient, driving groups to exactly zero progressively, with an exact target.

    Training runs in three phases, counted in calls to `step()`:

    1. **warmup** (steps `[0, partition_step)`): every parameter takes the base step (`"sgd"` with momentum, `"adam"`
       or `"adamw"`, equal to the matching `torch.optim` class step for step).
    2. **pruning** (steps `[partition_step, pruning_end)`): at each partition step the groups are scored and the most
       redundant ones, covering `target + tolerance` of the budget, form the redundant set. The default score
       (`saliency="fisher"`) is a loss-based importance per unit of the budget's cost: the mean of `<x_g, grad_g>^2`
       over the steps since the last partition (over the period before the first one), so that heads and neurons
       compete on one scale. Important groups and parameters outside all groups take the base step. Redundant groups
       take `x_g - lr * (d_g + lambda_g * x_g / ||x_g||)`, with `lambda_g` adapted per group and step so that the step
       shrinks the group while staying a descent direction, and are projected to zero when the trial point leaves the
       half-space `<x_hat_g, x_g> >= epsilon * ||x_g||^2`. Projections never exceed the target. Once it is reached
       the penalty stops.
    3. **recovery** (steps `>= pruning_end`): base steps; zero groups stay exactly zero, weights and optimizer state.

    **Progressive schedule** (`lambda_schedule="progressive"`, the default). The window is split into
    `num_partition_periods` periods. At the start of each, the next quota of redundant groups, by score, becomes
    *due*, so that due and zero groups cover `(k + 1) / P` of the target after period `k` (the last period takes the
    rest of the target by the deadline rule below). Each due group's `lambda_g` is raised, step by step, to the value
    that makes its norm follow a linear ramp to zero by the end of its period (learning rate, group size and weight
    scale cancel out), and the half-space test (threshold 0.05 for due groups) projects it at the ramp's end. So the
    groups reach zero through the optimizer's own steps, one quota per period. With `"constant"`, OTOv2's rule alone
    (constant `lmbda`, amplified lower bound, cap) decides; with Adam learning rates it rarely projects a group, and
    the deadline then does the pruning (for parity studies: `lambda_schedule="constant", saliency="otov2"`).

    **Deadline, a safety net.** In the last pruning step (`pruning_end - 1`) the groups still missing are projected:
    the non-zero redundant groups with the highest redundancy score first, then the other groups. These *forced*
    zeros are counted (`num_forced_zero_groups`); a warning is logged when they exceed 1% of the target, since a group
    projected with most of its norm left is one-shot pruning, not OTO.

    **Budgets and the exact rule.** With `budget="groups"` (default), exactly `round(target_sparsity * num_groups)`
    groups (rounding half up; with `uniform_widths`, the planned count below) are zero after `pruning_end` steps.
    With `"params"` or `"flops"`, each group has a cost (its `num_params`, or `group_costs`) and the removed fraction
    is `sum(cost of zero groups) / budget_total`. In the pruning phase the removed cost never exceeds
    `target_sparsity * budget_total`. At the deadline the remaining candidates (redundant groups by decreasing
    redundancy score, then the others) are added in that order whenever they still fit under the target; if the
    removed cost is still below the target, the cheapest remaining candidate is added. So the removed cost ends at or
    above the target, and above it by less than the cost of the group that closed the gap, which is the cheapest group
    left (whose family may still lose one, under `min_kept_per_family`). A target above what all groups together cost
    raises a `ValueError` at construction.

    **Family constraints.** A *family* is the set of groups that slice the same tensors (key: the sorted
    `(name, dim)` pairs of a group's slices), e.g. the heads of one layer or the neurons of one FFN; see `families`.
    `min_kept_per_family` bounds the zero groups of each family at every step (redundant set, projections, deadline).
    `uniform_widths` fixes the number of zero groups of every family at construction and fills each family to exactly
    that number at the deadline, with its least salient groups (redundant ones first); no step exceeds it. The rule:
    families of one kind and size `n` form a class; steps "a `k`-th zero group in every family of the class" are
    taken in order of the width fraction `k / n` (ties: the class whose groups come first), within
    `min_kept_per_family`, until the removed cost reaches the target (a cost budget counts the `k`-th cheapest group
    of each family). So all classes lose about the same fraction of their width, and the planned total is the first
    one at or above the target along that path, above it by less than the last step. With `budget="groups"` and as
    many families in every class (e.g. heads and FFN neurons of every layer) it is the smallest count at or above
    `round(target_sparsity * num_groups)` that uniform widths allow; it is `target_num_zero_groups` and the families'
    `max_zero`. A target the constraints make unreachable raises a `ValueError` at construction.

    Every step uses a few segmented reductions over all groups and no Python loop over groups; the only host
    synchronisations happen at partition steps and at the deadline. All grouped parameters must sit on one device
    and `lr` must be a Python float. During a pruning step the base direction of every grouped parameter is held
    until all group statistics are reduced: with the Adam variants that is one temporary tensor the size of the
    grouped weights (with SGD the momentum buffer serves).

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
        budget (`str`, *optional*, defaults to `"groups"`):
            what `target_sparsity` counts: `"groups"`, `"params"` (parameters of the groups) or `"flops"`.
        group_costs (`Sequence[float]` or `torch.Tensor`, *optional*):
            cost of each group for `budget="flops"`; defaults to the groups' `num_params`.
        budget_total (`float`, *optional*):
            denominator of the removed fraction for `"params"`/`"flops"` (e.g. the whole model's parameters or FLOPs);
            defaults to the total cost of all groups.
        partition_step (`int`, *optional*, defaults to `0`): first pruning step (the number of warm-up steps).
        pruning_end (`int`): number of steps after which the target is met exactly; must exceed `partition_step`.
        num_partition_periods (`int`, *optional*):
            re-score the groups, re-choose the redundant set and (progressive schedule) mark the next quota due this
            many times, evenly spaced from `partition_step` (see `partition_steps`); zero groups stay zero and stay
            redundant. Defaults to `5` with the progressive schedule, `1` with the constant one.
        lmbda (`float`, *optional*): base penalty; defaults to `1e-3` for `"sgd"`, `1e-2` for Adam variants.
        lmbda_amplify (`float`, *optional*): factor on the lower bound; defaults to `2` (`"sgd"`) or `20` (Adam).
        lmbda_cap (`float`, *optional*): `lambda_g <= lmbda * lmbda_cap`; defaults to `10` (`"sgd"`) or `1000` (Adam).
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
        saliency_weights (`tuple[float, float]`, *optional*, defaults to `(0.5, 0.5)`):
            with `saliency="otov2"`, the weights of the cosine and inverse-magnitude terms.
        min_kept_per_family (`int` or `dict[str, int]`, *optional*, defaults to `0`):
            groups that stay non-zero in each family, always: an int for every family, or `{kind: int}` for the
            families of those kinds (other kinds: 0), e.g. `{"head": 1}` so that no layer loses all its heads. A family
            of at most that many groups is never pruned. With a cost budget, the reachability check counts each
            family's cheapest removable groups.
        max_family_sparsity (`float`, *optional*, defaults to `1.0`):
            most of each family's groups that may be zero, in `(0, 1]`, e.g. `0.9` so that no layer loses more than
            90% of its heads or neurons (rounded down to whole groups).
        never_empty (`Sequence[tuple]`, *optional*):
            family keys (see `families`) that always keep at least one group, e.g. the families whose removal
            disconnects the output from the input (`oto_hf.bottleneck_families` finds them).
        uniform_widths (`bool`, *optional*, defaults to `False`):
            from `pruning_end` on, every family of the same kind and size has the same number of zero groups (the
            rule above), so a stock config can describe the pruned model. The removed cost ends at or above the
            target. Each family's redundant set is its `max_zero` least salient groups plus `round(tolerance * size)`.
        lambda_schedule (`str`, *optional*, defaults to `"progressive"`):
            `"progressive"` (quotas driven to zero along planned trajectories, see above) or `"constant"` (OTOv2's
            per-group lambdas alone).
        sync_ranks (`bool`, *optional*, defaults to `True`):
            when a `torch.distributed` process group is initialised, take every decision (redundant set, due ramps,
            zero mask) from rank 0 with one broadcast per pruning step, so that ranks can never disagree on which
            groups are zero (CUDA reductions are not deterministic). Turn it off only when the ranks train different
            models.

    Example:

    ```python
    >>> from oto_hf.optim import DHSPG
    >>> optimizer = DHSPG.from_model(model, groups, lr=1e-4, target_sparsity=0.3, partition_step=100, pruning_end=1000)
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
    ...     model, groups, lr=1e-4, target_sparsity=0.5, pruning_end=1000,
    ...     min_kept_per_family={"head": 1}, uniform_widths=True,
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
        budget: str = "groups",
        group_costs: Sequence[float] | torch.Tensor | None = None,
        budget_total: float | None = None,
        partition_step: int = 0,
        pruning_end: int,
        num_partition_periods: int | None = None,
        lmbda: float | None = None,
        lmbda_amplify: float | None = None,
        lmbda_cap: float | None = None,
        epsilon: float = 0.0,
        final_epsilon: float | None = None,
        tolerance: float = 0.05,
        saliency: str = "fisher",
        importance_window: int | None = None,
        saliency_weights: tuple[float, float] = (0.5, 0.5),
        min_kept_per_family: int | Mapping[str, int] = 0,
        max_family_sparsity: float = 1.0,
        never_empty: Sequence[tuple] = (),
        uniform_widths: bool = False,
        lambda_schedule: str = "progressive",
        sync_ranks: bool = True,
    ) -> None:
        if variant not in base_steps.VARIANTS:
            raise ValueError(f"`variant` must be one of {base_steps.VARIANTS}, got {variant!r}.")
        _check_range("target_sparsity", target_sparsity, 0.0, 1.0)
        _check_range("tolerance", tolerance, 0.0, 1.0)
        _check_range("epsilon", epsilon, 0.0, 1.0)
        if final_epsilon is not None:
            _check_range("final_epsilon", final_epsilon, 0.0, 1.0)
        _check_int("partition_step", partition_step, 0)
        _check_int("pruning_end", pruning_end, partition_step + 1, f"greater than `partition_step` ({partition_step})")
        if lambda_schedule not in LAMBDA_SCHEDULES:
            raise ValueError(f"`lambda_schedule` must be one of {LAMBDA_SCHEDULES}, got {lambda_schedule!r}.")
        if saliency not in SALIENCIES:
            raise ValueError(f"`saliency` must be one of {SALIENCIES}, got {saliency!r}.")
        if num_partition_periods is None:
            num_partition_periods = min(5, pruning_end - partition_step) if lambda_schedule == "progressive" else 1
        _check_int(
            "num_partition_periods",
            num_partition_periods,
            1,
            f"in [1, pruning_end - partition_step] = [1, {pruning_end - partition_step}]",
            high=pruning_end - partition_step,
        )
        default_lmbda, default_amplify, default_cap = LAMBDA_DEFAULTS[variant]
        self._lmbda = default_lmbda if lmbda is None else lmbda
        self._amplify = default_amplify if lmbda_amplify is None else lmbda_amplify
        self._cap = default_cap if lmbda_cap is None else lmbda_cap
        _check_positive("lmbda", self._lmbda, 0.0, "> 0")
        _check_positive("lmbda_amplify", self._amplify, 1.0, ">= 1")
        _check_positive("lmbda_cap", self._cap, 1.0, ">= 1")
        weights = tuple(float(w) for w in saliency_weights)
        if len(weights) != 2 or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) == 0:
            raise ValueError(
                f"`saliency_weights` must be two non-negative numbers, not both zero, got {saliency_weights!r}."
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
        self._index = GroupIndex(groups, named_parameters, optimizer_params)
        self._position = {id(p): i for i, p in enumerate(self._index.params)}
        num_params = [
            getattr(g, "num_params", 0) or int(n) for g, n in zip(groups, self._index.group_numel, strict=True)
        ]
        self._budget: Budget = resolve_budget(
            budget, target_sparsity, tolerance, num_params, group_costs, budget_total
        )
        device = self._index.device
        self._families = FamilyConstraints(
            groups,
            min_kept_per_family,
            uniform_widths,
            self._budget,
            tolerance,
            known_kinds=GROUP_KINDS,
            max_family_sparsity=max_family_sparsity,
            never_empty=never_empty,
        ).to(device)
        if self._families.constrained and uniform_widths and self._budget.kind == "groups":
            # Uniform widths may need a few more zero groups than round(target * N): the planned count is the target.
            planned = float(sum(family.max_zero for family in self._families.families))
            self._budget = dataclasses.replace(self._budget, target_cost=planned, redundant_cost=planned)
        self._costs = self._budget.costs.to(device)
        self._numel = self._index.group_numel

        self.target_sparsity = target_sparsity
        self.budget = budget
        self._partition_step = partition_step
        self._pruning_end = pruning_end
        period = (pruning_end - partition_step) // num_partition_periods
        self._partition_steps = tuple(partition_step + i * period for i in range(num_partition_periods))
        self._epsilon = epsilon
        self._final_epsilon = epsilon if final_epsilon is None else final_epsilon
        self._saliency_weights = weights
        self.saliency = saliency
        self.uniform_widths = uniform_widths
        self.lambda_schedule = lambda_schedule
        self.sync_ranks = sync_ranks
        # Importance is accumulated over the pruning steps and over the period before the first partition.
        if importance_window is not None:
            _check_int("importance_window", importance_window, 1)
        self._importance_from = max(0, partition_step - (importance_window or period))

        # Run state (all in `state_dict()`).
        num_groups = self._index.num_groups
        self._num_steps = 0
        self._zero = torch.zeros(num_groups, dtype=torch.bool, device=device)
        self._redundant = torch.zeros(num_groups, dtype=torch.bool, device=device)
        self._priority = torch.arange(num_groups, device=device)
        self._lambda = torch.zeros(num_groups, dtype=torch.float32, device=device)
        self._family_order = self._families.family_order(self._priority)
        self._final_num_zero_groups: int | None = None
        self._importance = torch.zeros(num_groups, dtype=torch.float32, device=device)
        self._importance_steps = 0
        self._due_start = torch.full((num_groups,), -1, dtype=torch.long, device=device)
        self._due_end = torch.full((num_groups,), -1, dtype=torch.long, device=device)
        self._due_norm = torch.zeros(num_groups, dtype=torch.float32, device=device)
        self._num_forced = 0

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
        >>> optimizer = DHSPG.from_model(model, groups, lr=3e-4, weight_decay=0.01, pruning_end=500)
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
        if self._num_steps < self._partition_step:
            return "warmup"
        return "pruning" if self._num_steps < self._pruning_end else "recovery"

    @property
    def partition_steps(self) -> tuple[int, ...]:
        """Steps (0-based counts of earlier `step()` calls) at which groups are scored and the redundant set chosen."""
        return self._partition_steps

    @property
    def pruning_end(self) -> int:
        """Number of steps after which exactly the target is zero."""
        return self._pruning_end

    @property
    def target_num_zero_groups(self) -> int | None:
        """Groups zero from `pruning_end` on: known upfront for `budget="groups"` or with `uniform_widths`, else once
        the deadline passed."""
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
        return torch.nonzero(self._due_start >= 0).flatten().tolist()

    def family_zero_counts(self) -> list[int]:
        """Number of zero groups in each family, in `families` order (reads values back from the device)."""
        return self._families.zero_counts(self._zero).tolist()

    @property
    def lambdas(self) -> torch.Tensor:
        """Per-group lambda of the last pruning step (zero outside the penalised redundant groups); a copy."""
        return self._lambda.clone()

    def num_zero_groups(self) -> int:
        """Number of groups that are zero now (reads a value back from the device)."""
        return int(self._zero.sum())

    def group_sparsity(self) -> float:
        """Fraction of groups that are zero now (reads a value back from the device)."""
        return self.num_zero_groups() / self.num_groups if self.num_groups else 0.0

    def removed_fraction(self) -> float:
        """Removed fraction in the budget's unit: zero cost over `budget_total` (`group_sparsity` for groups)."""
        return float((self._costs * self._zero).sum()) / self._budget.total if self._budget.total else 0.0

    def zero_group_ids(self) -> list[int]:
        """Ids of the zero groups, e.g. for `construct_subnet`."""
        return torch.nonzero(self._zero).flatten().tolist()

    def redundant_group_ids(self) -> list[int]:
        """Ids of the current redundant set (empty before the first partition step)."""
        return torch.nonzero(self._redundant).flatten().tolist()

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
        step = self._num_steps
        if not self._budget.active or step < self._partition_step:
            if self._budget.active and self.saliency == "fisher" and step >= self._importance_from:
                self._accumulate_importance()
            self._base_step(masked=False)
        elif step < self._pruning_end:
            self._pruning_step(step)
        else:
            self._base_step(masked=True)
        self._num_steps += 1
        return loss

    def _base_step(self, masked: bool) -> None:
        keep = extend((~self._zero).float(), 1.0) if masked else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                position = self._position.get(id(param))
                if keep is not None and position is not None:
                    # Zero gradients keep the weights and the state of zero groups exactly zero.
                    grad = grad * self._expand(keep, position, torch.mul).to(grad.dtype)
                base_steps.update(self.variant, param, grad, self.state[param], group)

    def _accumulate_importance(self, xg: torch.Tensor | None = None) -> None:
        """Add `<x_g, grad_g>^2` (the squared gradient of a mask on each group) to the running importance."""
        if xg is None:
            rows = [
                axis.sum_over_others(param * param.grad)[None]
                if param.grad is not None
                else torch.zeros(1, param.shape[axis.dim], device=param.device)
                for param, axes in zip(self._index.params, self._index.axes)
                for axis in axes
            ]
            xg = self._index.segment_sums(rows)[0]
        self._importance += xg.square()
        self._importance_steps += 1

    def _scores(self, stats: dict[str, torch.Tensor], zero: torch.Tensor) -> torch.Tensor:
        """Redundancy scores (high: remove first) by the chosen saliency; on the CPU."""
        if self.saliency == "fisher":
            return importance_scores(self.importance, self._costs, zero)
        return redundancy_scores(stats, self._numel, zero, self._saliency_weights)

    def _pruning_step(self, step: int) -> None:
        partition = step in self._partition_steps
        deadline = step == self._pruning_end - 1
        group_of = {id(p): group for group in self.param_groups for p in group["params"]}
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None and id(param) not in self._position:
                    base_steps.update(self.variant, param, param.grad, self.state[param], group)

        directions: list[torch.Tensor | None] = []
        decays: list[float] = []
        fisher = self.saliency == "fisher"
        keys = [*_STAT_KEYS, *(["xg"] if fisher else []), *(["l1"] if partition or deadline else [])]
        rows = []
        for param, axes in zip(self._index.params, self._index.axes):
            group = group_of[id(param)]
            d, decay = (
                (None, 0.0)
                if param.grad is None
                else base_steps.direction(self.variant, param, param.grad, self.state[param], group)
            )
            directions.append(d)
            decays.append(decay)
            for axis in axes:
                xx = axis.squared_norms(param)
                if d is None:
                    xd = dd = torch.zeros_like(xx)
                else:
                    xd, dd = axis.sum_over_others(param * d), axis.squared_norms(d)
                if decay:
                    # Statistics of d + decay * x from those of d, without materialising it.
                    dd = (dd + 2 * decay * xd + decay**2 * xx).clamp_min_(0)
                    xd = xd + decay * xx
                block = [xx, xd, dd, xx * group["lr"], xd * group["lr"]]
                if fisher:
                    block.append(torch.zeros_like(xx) if d is None else axis.sum_over_others(param * param.grad))
                if partition or deadline:
                    block.append(axis.sum_over_others(param.abs()))
                rows.append(torch.stack(block))
        stats = dict(zip(keys, self._index.segment_sums(rows), strict=True))
        if fisher:
            self._accumulate_importance(stats["xg"])

        if partition:
            self._partition(stats, step)
        zero, coef = self._penalise(stats, step)
        if deadline:
            scores = self._scores(stats, zero)
            select = self._families.deadline_selection if self._families.constrained else deadline_selection
            chosen = select(scores, zero.cpu(), self._redundant.cpu(), self._budget).to(zero.device)
            if self.sync_ranks:
                (chosen,) = _from_first_rank(chosen)
            zero = zero | chosen
            self._num_forced = int(chosen.sum())
            self._final_num_zero_groups = int(zero.sum())
            forced_share = float((self._costs * chosen).sum()) / self._budget.target_cost
            log = logger.warning if forced_share > 0.01 else logger.info
            log(
                "DHSPG step %d: deadline reached, %d groups zero, %d of them forced by the deadline (%.1f%% of the "
                "target)%s.",
                step,
                self._final_num_zero_groups,
                self._num_forced,
                100 * forced_share,
                ": the optimizer's steps did not zero them in time; prune over a longer window or more periods"
                if forced_share > 0.01
                else "",
            )
        if self.sync_ranks:
            (zero,) = _from_first_rank(zero)
        self._zero = zero

        keep = extend((~zero).float(), 1.0)
        coef = extend(coef, 0.0)
        for position, (param, d, decay) in enumerate(zip(self._index.params, directions, decays)):
            keep_p = self._expand(keep, position, torch.mul).to(param.dtype)
            if d is None:
                param.mul_(keep_p)
            else:
                # x <- keep * ((1 - lr * (decay + lambda_g / ||x_g||)) * x - lr * d)
                lr = group_of[id(param)]["lr"]
                # In float32: 1 - lr * coef must not round to 1 in a low-precision dtype before it multiplies x.
                scale = self._expand(coef, position, torch.add).add(decay).mul_(-lr).add_(1).mul_(keep_p)
                param.mul_(scale).addcmul_(d, keep_p, value=-lr)
            for tensor in base_steps.state_tensors(self.state[param]):
                tensor.mul_(keep_p)

    def _partition(self, stats: dict[str, torch.Tensor], step: int) -> None:
        """Re-score, re-choose the redundant set and, with the progressive schedule, mark the next quota due."""
        scores = self._scores(stats, self._zero)
        zero = self._zero.cpu()
        if self._families.constrained:
            redundant, priority = self._families.choose_redundant(scores, zero, self._budget)
        else:
            redundant, priority = choose_redundant(scores, zero, self._budget)
        device = self._zero.device
        self._redundant, self._priority = redundant.to(device), priority.to(device)
        if self.sync_ranks:
            self._redundant, self._priority = _from_first_rank(self._redundant, self._priority)
        self._family_order = self._families.family_order(self._priority)
        self._importance.zero_()
        self._importance_steps = 0
        logger.info("DHSPG step %d: %d redundant groups chosen.", step, int(redundant.sum()))
        if self.lambda_schedule != "progressive":
            return
        period = self._partition_steps.index(step)
        last = period == len(self._partition_steps) - 1
        ramp_end = self._pruning_end - 1 if last else self._partition_steps[period + 1] - 1
        taken = zero | (self._due_start >= 0).cpu()  # zero, or already on its way
        families = self._families
        if families.constrained and self.uniform_widths:
            candidates = redundant & ~taken
            new = families.due(
                candidates, taken, families.family_order(priority), (period + 1) / len(self._partition_steps)
            )
        elif last:
            select = families.deadline_selection if families.constrained else deadline_selection
            new = select(scores, taken, redundant, self._budget)
        else:
            candidates = redundant & ~taken
            if families.constrained:
                candidates = families.cap(candidates, taken, families.family_order(priority))
            quota = self._budget.target_cost * (period + 1) / len(self._partition_steps)
            new = cap_projections(candidates, taken, self._budget, self._budget.costs, priority, quota)
        new = new.to(device)
        self._due_start, self._due_end, self._due_norm = mark_due(
            new, self._due_start, self._due_end, self._due_norm, stats["xx"].sqrt(), step, ramp_end
        )
        if self.sync_ranks:
            self._due_start, self._due_end, self._due_norm = _from_first_rank(
                self._due_start, self._due_end, self._due_norm
            )
        logger.info(
            "DHSPG step %d: %d groups start their ramp to zero (end of ramp: step %d).", step, int(new.sum()), ramp_end
        )

    def _penalise(self, stats: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group lambda, half-space projection and caps; returns the new zero mask and `lambda_g / ||x_g||`."""
        xx, xd, dd = stats["xx"], stats["xd"], stats["dd"]
        zero = self._zero
        families = self._families
        due = (self._due_start >= 0) & ~zero
        active = (self._costs * zero).sum() < self._budget.target_cost
        penalised = self._redundant & ~zero & active
        if families.constrained:
            # A family at its quota loses no more groups, so its groups are no longer penalised.
            penalised &= families.has_room(zero | due)
        # Due groups were budgeted when they became due: they are penalised until they are zero.
        penalised |= due
        norm = xx.sqrt()
        safe_norm = norm.clamp_min(_TINY)
        grows = xd < 0
        low = -xd / safe_norm
        high = -dd * norm / torch.where(grows, xd, torch.full_like(xd, -1.0))
        lam = (self._amplify * low).clamp(self._lmbda, self._lmbda * self._cap)
        lam = torch.where(lam > high, (low + high) / 2, lam)
        lam = torch.where(grows, lam, torch.full_like(lam, self._lmbda)) * penalised
        if self.lambda_schedule == "progressive":
            planned = planned_lambda(
                xx, stats["axd"], stats["axx"], self._due_start, self._due_end, self._due_norm, step
            )
            lam = torch.where(due, torch.maximum(lam, planned), lam)
        coef = torch.where(norm > 0, lam / safe_norm, torch.zeros_like(lam))
        # <x_hat, x> for x_hat = x - lr * (d + lam * x / ||x||), with lr folded into axx and axd per parameter. A
        # redundant group that is already exactly zero is simply marked zero.
        inner = xx - stats["axd"] - coef * stats["axx"]
        epsilon = self._epsilon_at(step)
        threshold = torch.where(due, max(DUE_EPSILON, epsilon), epsilon)
        candidates = penalised & ((inner < threshold * xx) | (xx == 0))
        # Due groups project within their budget; others within what the due groups leave of the target.
        others = candidates & ~due
        taken = zero | due
        if families.constrained:
            others = families.cap(others, taken, self._family_order)
        others = cap_projections(others, taken, self._budget, self._costs, self._priority)
        zero = zero | (candidates & due) | others
        self._lambda = lam
        return zero, coef

    def _epsilon_at(self, step: int) -> float:
        span = max(1, self._pruning_end - 1 - self._partition_step)
        return self._epsilon + (self._final_epsilon - self._epsilon) * min(1.0, (step - self._partition_step) / span)

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
            "num_steps": self._num_steps,
            "num_groups": self.num_groups,
            "zero": self._zero.clone(),
            "redundant": self._redundant.clone(),
            "priority": self._priority.clone(),
            "lambda": self._lambda.clone(),
            "family_max_zero": self._families.max_zero.clone(),
            "final_num_zero_groups": self._final_num_zero_groups,
            "importance": self._importance.clone(),
            "importance_steps": self._importance_steps,
            "due_start": self._due_start.clone(),
            "due_end": self._due_end.clone(),
            "due_norm": self._due_norm.clone(),
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
                "The state dict was written with other family quotas (`min_kept_per_family`, `uniform_widths` or "
                "`target_sparsity` differ); build the optimizer with the arguments of the saved run."
            )
        super().load_state_dict(state_dict)
        device = self._zero.device
        self._num_steps = int(extra["num_steps"])
        self._zero = extra["zero"].to(device=device, dtype=torch.bool).clone()
        self._redundant = extra["redundant"].to(device=device, dtype=torch.bool).clone()
        self._priority = extra["priority"].to(device=device, dtype=torch.long).clone()
        self._lambda = extra["lambda"].to(device=device, dtype=torch.float32).clone()
        self._importance = extra["importance"].to(device=device, dtype=torch.float32).clone()
        self._importance_steps = int(extra["importance_steps"])
        self._due_start = extra["due_start"].to(device=device, dtype=torch.long).clone()
        self._due_end = extra["due_end"].to(device=device, dtype=torch.long).clone()
        self._due_norm = extra["due_norm"].to(device=device, dtype=torch.float32).clone()
        self._num_forced = int(extra["num_forced"])
        self._family_order = self._families.family_order(self._priority)
        self._final_num_zero_groups = extra["final_num_zero_groups"]

    def state_nbytes(self) -> int:
        """Bytes of all tensors this optimizer keeps between steps: per-parameter state, group state and the index."""
        per_param = sum(
            value.numel() * value.element_size()
            for state in self.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor)
        )
        group_state = (
            self._zero, self._redundant, self._priority, self._lambda,
            self._importance, self._due_start, self._due_end, self._due_norm,
        )  # fmt: skip
        per_group = sum(t.numel() * t.element_size() for t in (*group_state, self._family_order))
        return per_param + per_group + self._index.index_nbytes() + self._costs.numel() * self._costs.element_size()


def _from_first_rank(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors as rank 0 holds them, when a process group with several ranks is initialised (one collective)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensors
    if torch.distributed.get_world_size() == 1:
        return tensors
    # One flat float64 buffer (exact for bools, group ids and float32 norms), broadcast once.
    packed = torch.cat([t.to(torch.float64).flatten() for t in tensors])
    torch.distributed.broadcast(packed, src=0)
    out, start = [], 0
    for t in tensors:
        out.append(packed[start : start + t.numel()].view(t.shape).to(t.dtype))
        start += t.numel()
    return tuple(out)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value < high:
        raise ValueError(f"`{name}` must be in [{low:g}, {high:g}), got {value!r}.")


def _check_positive(name: str, value: float, low: float, allowed: str) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < low or (low == 0 and value == 0):
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")


def _check_int(name: str, value: int, low: int, allowed: str | None = None, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        raise ValueError(f"`{name}` must be an int {allowed or f'>= {low}'}, got {value!r}.")
