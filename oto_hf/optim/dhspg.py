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
    first_within,
    redundancy_scores,
    resolve_budget,
)
from .schedules import LAMBDA_SCHEDULES, LambdaRamp

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
_TINY = 1e-30
_STAT_KEYS = ("xx", "xd", "dd", "axx", "axd", "l1")


class DHSPG(Optimizer):
    r"""OTOv2's Dual Half-Space Projected Gradient, with a target that is met exactly by a deadline.

    Training runs in three phases, counted in calls to `step()`:

    1. **warmup** (steps `[0, partition_step)`): every parameter takes the base step (`"sgd"` with momentum, `"adam"`
       or `"adamw"`, equal to the matching `torch.optim` class step for step).
    2. **pruning** (steps `[partition_step, pruning_end)`): at each partition step the groups are scored by saliency
       (OTOv2's mix of `cos(x_g, d_g)` and `1 / avg|x_g|`, `d` being the base update direction) and the most redundant
       ones, covering `target + tolerance` of the budget, form the redundant set. Important groups and parameters
       outside all groups take the base step. Redundant groups take `x_g - lr * (d_g + lambda_g * x_g / ||x_g||)`,
       with `lambda_g` adapted per group and step so that the step shrinks the group while staying a descent
       direction, and are projected to zero when the trial point leaves the half-space
       `<x_hat_g, x_g> >= epsilon * ||x_g||^2`. Projections never exceed the target: when more groups qualify than
       the budget has room for, they are taken in saliency order. Once the target is reached the penalty stops. In
       the last pruning step (`pruning_end - 1`) the groups still missing are projected: the non-zero redundant
       groups with the highest redundancy score (lowest saliency) first, then the other groups.
    3. **recovery** (steps `>= pruning_end`): base steps; zero groups stay exactly zero, weights and optimizer state.

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

    **Adaptive lambda.** With the reference lambdas, groups rarely leave the half-space before the deadline, so most of
    the target is projected at once in the last pruning step. `lambda_schedule="adaptive"` makes the zero count follow
    a linear ramp from `partition_step` to the target at `pruning_end` (per family with `uniform_widths`, else in
    cost; rounded up to whole groups). In each pruning step the redundant groups the ramp still lacks, taken in
    priority (saliency) order, are *due*: their `lambda_g` is multiplied by the lambda scale, while the other groups
    keep the reference lambdas. After the step the scale is multiplied by `lambda_growth` if the zero count is behind
    the ramp and divided by it otherwise, within `[1, lambda_max_scale]`. Projections never run ahead of the ramp, and
    a scaled penalty that would carry a group the caps keep from projecting past zero stops at zero instead. The
    deadline still makes the result exact.

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
        num_partition_periods (`int`, *optional*, defaults to `1`):
            re-score the groups and re-choose the redundant set this many times, evenly spaced from `partition_step`
            (see `partition_steps`); zero groups stay zero and stay redundant.
        lmbda (`float`, *optional*): base penalty; defaults to `1e-3` for `"sgd"`, `1e-2` for Adam variants.
        lmbda_amplify (`float`, *optional*): factor on the lower bound; defaults to `2` (`"sgd"`) or `20` (Adam).
        lmbda_cap (`float`, *optional*): `lambda_g <= lmbda * lmbda_cap`; defaults to `10` (`"sgd"`) or `1000` (Adam).
        epsilon (`float`, *optional*, defaults to `0.0`): half-space projection threshold, in `[0, 1)`.
        final_epsilon (`float`, *optional*):
            if set, epsilon ramps linearly from `epsilon` at the first partition step to this value at the deadline,
            making projections easier as the deadline nears; defaults to a constant `epsilon`.
        tolerance (`float`, *optional*, defaults to `0.05`): the redundant set covers `target + tolerance`.
        saliency_weights (`tuple[float, float]`, *optional*, defaults to `(0.5, 0.5)`):
            weights of the cosine and inverse-magnitude terms of the redundancy score.
        min_kept_per_family (`int` or `dict[str, int]`, *optional*, defaults to `0`):
            groups that stay non-zero in each family, always: an int for every family, or `{kind: int}` for the
            families of those kinds (other kinds: 0), e.g. `{"head": 1}` so that no layer loses all its heads. A family
            of at most that many groups is never pruned. With a cost budget, the reachability check counts each
            family's cheapest removable groups.
        uniform_widths (`bool`, *optional*, defaults to `False`):
            from `pruning_end` on, every family of the same kind and size has the same number of zero groups (the
            rule above), so a stock config can describe the pruned model. The removed cost ends at or above the
            target. Each family's redundant set is its `max_zero` least salient groups plus `round(tolerance * size)`.
        lambda_schedule (`str`, *optional*, defaults to `"constant"`):
            `"constant"` (the reference per-group lambdas) or `"adaptive"` (progressive pruning, see above). Not the
            default: with it, the targets of existing runs are reached earlier, before the deadline.
        lambda_growth (`float`, *optional*):
            factor of the adaptive lambda scale per pruning step, `>= 1`; defaults to
            `max(1.1, lambda_max_scale ** (2 / (pruning_end - partition_step)))`.
        lambda_max_scale (`float`, *optional*, defaults to `1e6`): upper bound of the adaptive lambda scale, `>= 1`.

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

    Keep at least one head per layer, prune to uniform widths, and prune progressively:

    ```python
    >>> optimizer = DHSPG.from_model(
    ...     model, groups, lr=1e-4, target_sparsity=0.5, pruning_end=1000,
    ...     min_kept_per_family={"head": 1}, uniform_widths=True, lambda_schedule="adaptive",
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
        num_partition_periods: int = 1,
        lmbda: float | None = None,
        lmbda_amplify: float | None = None,
        lmbda_cap: float | None = None,
        epsilon: float = 0.0,
        final_epsilon: float | None = None,
        tolerance: float = 0.05,
        saliency_weights: tuple[float, float] = (0.5, 0.5),
        min_kept_per_family: int | Mapping[str, int] = 0,
        uniform_widths: bool = False,
        lambda_schedule: str = "constant",
        lambda_growth: float | None = None,
        lambda_max_scale: float = 1e6,
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
        if lambda_schedule not in LAMBDA_SCHEDULES:
            raise ValueError(f"`lambda_schedule` must be one of {LAMBDA_SCHEDULES}, got {lambda_schedule!r}.")
        ramp = LambdaRamp(partition_step, pruning_end, lambda_growth, lambda_max_scale)
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
            groups, min_kept_per_family, uniform_widths, self._budget, tolerance, known_kinds=GROUP_KINDS
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
        self.uniform_widths = uniform_widths
        self.lambda_schedule = lambda_schedule
        self._ramp = ramp if lambda_schedule == "adaptive" else None

        # Run state (all in `state_dict()`).
        num_groups = self._index.num_groups
        self._num_steps = 0
        self._zero = torch.zeros(num_groups, dtype=torch.bool, device=device)
        self._redundant = torch.zeros(num_groups, dtype=torch.bool, device=device)
        self._priority = torch.arange(num_groups, device=device)
        self._lambda = torch.zeros(num_groups, dtype=torch.float32, device=device)
        self._lambda_scale = torch.ones(self._families.num_families, dtype=torch.float32, device=device)
        self._family_order = self._families.family_order(self._priority)
        self._final_num_zero_groups: int | None = None

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
    def lambda_scale(self) -> torch.Tensor:
        """Per-family factor of the adaptive schedule on the lambdas of due groups (ones with `"constant"`); a copy."""
        return self._lambda_scale.clone()

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
                if partition or deadline:
                    block.append(axis.sum_over_others(param.abs()))
                rows.append(torch.stack(block))
        stats = dict(zip(_STAT_KEYS, self._index.segment_sums(rows)))

        if partition:
            scores = redundancy_scores(stats, self._numel, self._zero, self._saliency_weights)
            if self._families.constrained:
                redundant, priority = self._families.choose_redundant(scores, self._zero.cpu(), self._budget)
            else:
                redundant, priority = choose_redundant(scores, self._zero.cpu(), self._budget)
            self._redundant, self._priority = redundant.to(self._zero.device), priority.to(self._zero.device)
            self._family_order = self._families.family_order(self._priority)
            logger.info("DHSPG step %d: %d redundant groups chosen.", step, int(redundant.sum()))
        zero, coef = self._penalise(stats, step)
        if deadline:
            scores = redundancy_scores(stats, self._numel, zero, self._saliency_weights)
            select = self._families.deadline_selection if self._families.constrained else deadline_selection
            chosen = select(scores, zero.cpu(), self._redundant.cpu(), self._budget)
            zero = zero | chosen.to(zero.device)
            self._final_num_zero_groups = int(zero.sum())
            logger.info("DHSPG step %d: deadline reached, %d groups zero.", step, self._final_num_zero_groups)
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
                if self._ramp is not None:
                    # A scaled penalty may overshoot zero in a group the caps keep from projecting; stop it at zero.
                    scale.clamp_(min=0)
                param.mul_(scale).addcmul_(d, keep_p, value=-lr)
            for tensor in base_steps.state_tensors(self.state[param]):
                tensor.mul_(keep_p)

    def _penalise(self, stats: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group lambda, half-space projection and caps; returns the new zero mask and `lambda_g / ||x_g||`."""
        xx, xd, dd = stats["xx"], stats["xd"], stats["dd"]
        zero = self._zero
        families = self._families
        active = (self._costs * zero).sum() < self._budget.target_cost
        penalised = self._redundant & ~zero & active
        if families.constrained:
            # A family at its quota loses no more groups, so its groups are no longer penalised.
            penalised &= families.has_room(zero)
        norm = xx.sqrt()
        safe_norm = norm.clamp_min(_TINY)
        grows = xd < 0
        low = -xd / safe_norm
        high = -dd * norm / torch.where(grows, xd, torch.full_like(xd, -1.0))
        lam = (self._amplify * low).clamp(self._lmbda, self._lmbda * self._cap)
        lam = torch.where(lam > high, (low + high) / 2, lam)
        lam = torch.where(grows, lam, torch.full_like(lam, self._lmbda)) * penalised
        # The adaptive schedule: the groups due by its ramp get the scaled lambda, and projections follow the ramp
        # (per family with uniform widths, else in total).
        progress = None if self._ramp is None else self._ramp.progress(step)
        per_family = families.constrained and self.uniform_widths
        if progress is not None:
            if per_family:
                due = families.due(penalised, zero, self._family_order, progress)
            else:
                need = self._ramp.limit(self._budget, progress) - (self._costs * zero).sum()
                due = first_within(penalised, self._costs, self._priority, need)
            lam = lam * torch.where(due, self._lambda_scale[families.family_of], torch.ones_like(lam))
        coef = torch.where(norm > 0, lam / safe_norm, torch.zeros_like(lam))
        # <x_hat, x> for x_hat = x - lr * (d + lam * x / ||x||), with lr folded into axx and axd per parameter. A
        # redundant group that is already exactly zero is simply marked zero.
        inner = xx - stats["axd"] - coef * stats["axx"]
        candidates = penalised & ((inner < self._epsilon_at(step) * xx) | (xx == 0))
        if families.constrained:
            candidates = families.cap(candidates, zero, self._family_order, progress if per_family else None)
        limit = None if progress is None or per_family else self._ramp.limit(self._budget, progress)
        zero = zero | cap_projections(candidates, zero, self._budget, self._costs, self._priority, limit)
        self._lambda = lam
        if progress is not None:
            if per_family:
                lags = families.zero_counts(zero) < families.max_zero * progress
            else:
                lags = (self._costs * zero).sum() < self._budget.target_cost * progress
            self._lambda_scale = self._ramp.rescale(self._lambda_scale, lags)
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
        last per-group lambdas, and the group count; plain Python values and tensors only, so it loads with
        `torch.load(path, weights_only=True)`."""
        state = super().state_dict()
        state["dhspg"] = {
            "num_steps": self._num_steps,
            "num_groups": self.num_groups,
            "zero": self._zero.clone(),
            "redundant": self._redundant.clone(),
            "priority": self._priority.clone(),
            "lambda": self._lambda.clone(),
            "lambda_scale": self._lambda_scale.clone(),
            "family_max_zero": self._families.max_zero.clone(),
            "final_num_zero_groups": self._final_num_zero_groups,
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
        if "lambda_scale" in extra:
            self._lambda_scale = extra["lambda_scale"].to(device=device, dtype=torch.float32).clone()
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
        group_state = (self._zero, self._redundant, self._priority, self._lambda, self._lambda_scale)
        per_group = sum(t.numel() * t.element_size() for t in (*group_state, self._family_order))
        return per_param + per_group + self._index.index_nbytes() + self._costs.numel() * self._costs.element_size()


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value < high:
        raise ValueError(f"`{name}` must be in [{low:g}, {high:g}), got {value!r}.")


def _check_positive(name: str, value: float, low: float, allowed: str) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < low or (low == 0 and value == 0):
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")


def _check_int(name: str, value: int, low: int, allowed: str | None = None, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        raise ValueError(f"`{name}` must be an int {allowed or f'>= {low}'}, got {value!r}.")
