"""DHSPG (OTOv2's Dual Half-Space Projected Gradient) as a `torch.optim.Optimizer`, vectorised over packed groups.

The class docstring is the algorithm's contract; `step` orchestrates the phases. Beside it, one job each: `checks`
(settings: defaults, checks), `schedule` (steps), `base_steps` (SGD/Adam/AdamW), `packed_index` (segmented reductions),
`group_stats`, `penalty`, `events` (partition, deadline), `progressive`, `selection`, `families`, `rounding`
(`round_to`), `group_state` (run state, checkpoint), `sharding` (FSDP2, rank agreement), `operator_erasing` (H2SPG),
`output_importance` (`saliency="kfac"` and `"output"`), `sample_fisher` (`saliency="sample_fisher"`), `progress`
(read-only views).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer

from . import base_steps
from .checks import DEFAULTS, HOOKED_SALIENCIES, SETTING_NAMES, check_dhspg_settings, check_erasing
from .events import choose_redundant_set, deadline_projection, mark_next_quota
from .families import FamilyConstraints
from .group_state import GroupState
from .group_stats import Scratch, importance_rows, importance_statistics, pruning_statistics
from .nesting import QueryHeadNests
from .operator_erasing import OperatorErasing, family_budget
from .output_importance import OutputImportance
from .packed_index import GroupIndex, extend
from .penalty import LambdaRule, apply_step, penalise
from .progress import DHSPGProgress
from .readers import choose_saliency
from .sample_fisher import SampleFisher
from .schedule import PruningSchedule
from .selection import Budget, importance_scores, redundancy_scores, resolve_budget
from .sharding import from_first_rank, local

if TYPE_CHECKING:
    from torch.optim.optimizer import ParamsT

    from oto_hf.graph.families import FamilyKey
    from oto_hf.graph.groups import ZeroInvariantGroup
    from oto_hf.graph.operators import Operator


logger = logging.getLogger(__name__)


def importance_source_for(
    saliency: str, model: nn.Module, groups: Sequence[ZeroInvariantGroup]
) -> OutputImportance | SampleFisher | None:
    """The hooks that score the groups for `saliency` (`None` where the optimizer's own steps do)."""
    if saliency in ("kfac", "output"):
        return OutputImportance(model, groups, isotropic=saliency == "output")
    if saliency == "sample_fisher":
        return SampleFisher(model, groups)
    return None


# The (params, grads, states) lists of some parameters of one parameter group, as `base_steps` takes them.
_Lists = tuple[list[torch.Tensor], list[torch.Tensor], list[dict[str, Any]]]


class DHSPG(DHSPGProgress, Optimizer):
    r"""OTOv2's Dual Half-Space Projected Gradient, driving groups to exactly zero progressively, with an exact target.

    Training runs in three phases, counted in calls to `step()`:

    1. **warmup** (steps `[0, partition_steps)`): every parameter takes the base step (`"sgd"` with momentum, `"adam"`
       or `"adamw"`, equal to the matching `torch.optim` class step for step).
    2. **pruning** (steps `[partition_steps, pruning_end_steps)`): at each of the `partition_points` the groups are
       scored (`selection`: by default a loss-based importance per unit of the budget's cost) and the most redundant
       ones, covering `target + tolerance` of the budget, form the redundant set. Other parameters take the base step.
       Redundant groups take `x_g - lr * (d_g + lambda_g * x_g / ||x_g||)` with an adaptive `lambda_g` (`penalty`) and
       are projected to zero when the trial point leaves the half-space `<x_hat_g, x_g> >= epsilon * ||x_g||^2`,
       never beyond the target. The progressive schedule drives one quota of the target to zero per period along a
       planned ramp (`progressive`). The last pruning step projects what is still missing (`num_forced_zero_groups`,
       a warning above 1% of the target).
    3. **recovery** (steps `>= pruning_end_steps`): base steps; zero groups stay exactly zero, weights and optimizer
       state.

    **Exact target.** From `pruning_end_steps` on, exactly `round(target_sparsity * num_groups)` groups are zero with
    `sparsity_budget="groups"`; with `"params"` or `"flops"` the removed cost is at or above `target_sparsity *
    budget_total`, by less than the cheapest group left (`selection.deadline_selection`). Family constraints
    (`families`) hold at every step. An unreachable target is a `ValueError` at construction.

    **Cost.** No Python loop over groups and no host sync except at partition steps and the deadline. All grouped
    parameters sit on one device and `lr` is a Python float. After a pruning step, `param.grad` of a grouped parameter
    holds its base direction, not the gradient (the step allocates nothing of the weights' size). With FSDP2 each rank
    steps its own shards (`sharding`).

    The settings, defaults and checks are shared with `OTOTrainingArguments` (`checks`). Its defaults differ in four on
    purpose, as its docstring says; DHSPG's stay neutral: no FLOP costs without example inputs, no per-layer limit
    unless asked.

    Args:
        params (`Iterable[torch.Tensor]` or `Iterable[dict]`): parameters or parameter groups, as for any
            `torch.optim.Optimizer`; a dict may override `lr`, `weight_decay`, `betas`, `eps`, `momentum`,
            `dampening` and `nesterov`. A prunable group may span parameters of different parameter groups.
        groups (`Sequence[ZeroInvariantGroup]`): the zero-invariant groups (a `GroupSet`); group `i` at position `i`.
        named_parameters (`Mapping[str, torch.Tensor]` or `Iterable[tuple[str, torch.Tensor]]`): name to parameter
            for every parameter the groups slice, e.g. `dict(model.named_parameters(remove_duplicate=False))`.
        lr (`float`, *optional*, defaults to `1e-3`): learning rate.
        variant (`str`, *optional*, defaults to `"adamw"`): base optimizer, `"sgd"`, `"adam"` or `"adamw"`.
        betas (`tuple[float, float]`, *optional*, defaults to `(0.9, 0.999)`): Adam moment coefficients.
        eps (`float`, *optional*, defaults to `1e-8`): Adam denominator term.
        weight_decay (`float`, *optional*, defaults to `0.0`): decoupled for `"adamw"`, L2 for `"adam"` and `"sgd"`.
        momentum (`float`, *optional*, defaults to `0.9`): SGD momentum.
        dampening (`float`, *optional*, defaults to `0.0`): SGD dampening.
        nesterov (`bool`, *optional*, defaults to `False`): SGD Nesterov momentum.
        target_sparsity (`float`, *optional*, defaults to `0.5`): fraction to remove, in `[0, 1)`; 0 disables pruning.
        sparsity_budget (`str`, *optional*, defaults to `"groups"`): what `target_sparsity` counts: `"groups"`,
            `"params"` (parameters of the groups) or `"flops"`.
        group_costs (`Sequence[float]` or `torch.Tensor`, *optional*): cost of each group for `"flops"`
            (`oto_hf.group_flop_costs` measures them); defaults to the groups' `num_params`.
        budget_total (`float`, *optional*): denominator of the removed fraction for `"params"`/`"flops"` (e.g. the
            whole model's FLOPs); defaults to the total cost of all groups.
        partition_steps (`int`, *optional*, defaults to `0`): warm-up steps before the first partition.
        pruning_end_steps (`int`): steps after which the target is met exactly; must exceed `partition_steps`.
        num_partition_periods (`int`, *optional*): periods of the pruning window, each starting with a partition
            (`partition_points`); defaults to `5` with the progressive schedule, `1` with the constant one.
        lambda_ (`float`, *optional*): base penalty; defaults to `1e-3` for `"sgd"`, `1e-2` for Adam variants.
        lambda_amplify (`float`, *optional*): factor on the lower bound; defaults to `2` (`"sgd"`) or `20` (Adam).
        lambda_cap (`float`, *optional*): `lambda_g <= lambda_ * lambda_cap`; defaults to `10` (`"sgd"`) or `1000`.
        epsilon (`float`, *optional*, defaults to `0.0`): half-space projection threshold, in `[0, 1)`.
        final_epsilon (`float`, *optional*): if set, epsilon ramps linearly from `epsilon` at the first partition to
            this value at the deadline.
        tolerance (`float`, *optional*, defaults to `0.05`): the redundant set covers `target + tolerance`.
        saliency (`str`, *optional*, defaults to `"fisher"`): `"fisher"` (importance per unit of cost: the squared
            gradient of a mask on the group, `<x_g, grad_g>^2`, per step), `"sample_fisher"` (the same per training
            sequence, from hooks at each group's reader: `sample_fisher`), `"kfac"` (measured at the reader too:
            the group's output against the loss gradient's second moment there, `output_importance`), `"output"`
            (the same with the gradient taken as isotropic), the three needing `importance_source`, or
            `"otov2"` (OTOv2's mix of `cos(x_g, d_g)` and `1 / avg|x_g|`, blind to cost). `"auto"` needs the model:
            `from_model` resolves it (`readers.choose_saliency`).
        importance_window (`int`, *optional*, defaults to `0`): with `"fisher"`, `"sample_fisher"`, `"kfac"` or
            `"output"`, the warm-up steps that score the groups at the first partition; `0` means one period.
        saliency_cosine_weight (`float`, *optional*, defaults to `0.5`): with `"otov2"`, weight of the cosine term.
        saliency_magnitude_weight (`float`, *optional*, defaults to `0.5`): with `"otov2"`, weight of the
            inverse-magnitude term.
        min_heads_per_layer (`int`, *optional*, defaults to `0`): heads every family of heads (a layer's attention)
            keeps non-zero at every step, e.g. `1`; a family of at most that many groups is never pruned. With
            grouped-query attention, a layer then also keeps a KV group (`"kv_head"`).
        min_neurons_per_layer (`int`, *optional*, defaults to `0`): the same for FFN neurons (a layer may lose its
            whole FFN: the block then adds its output bias only).
        min_channels_per_layer (`int`, *optional*, defaults to `1`): the same for conv channels.
        max_family_sparsity (`float`, *optional*, defaults to `1.0`): most of each family's groups that may be zero,
            in `(0, 1]`, rounded down to whole groups.
        never_empty (`Sequence[FamilyKey]`, *optional*): family keys (`oto_hf.graph.families.family_key`) that keep
            at least one group, e.g. those `oto_hf.bottleneck_families` finds.
        uniform_widths (`bool`, *optional*, defaults to `False`): the same number of zero groups in every family of
            one kind and size (`families.plan_uniform_quotas`), so that a stock config describes the pruned model.
        round_to (`dict[str, int | str]`, *optional*): engine-friendly widths per kind (`rounding`): an int `m` (every
            family keeps a multiple of `m` groups, or all), `"uniform"` or `"free"`, e.g. `{"neuron": 128, "head":
            "uniform"}`. Quotas are re-planned on that grid at every partition and met exactly; the target is then met
            or exceeded by less than one grid step (`rounding.GridPlanner.plan`). GQA: see `rounding`.
        lambda_schedule (`str`, *optional*, defaults to `"progressive"`): `"progressive"` or `"constant"` (OTOv2's
            lambdas alone: the deadline then does most of the pruning; with `saliency="otov2"`, for parity studies).
        foreach (`bool`, *optional*): base steps with `torch._foreach_*` ops; defaults to `True` when every parameter
            is on a CUDA device (`torch.optim`'s default).
        sync_ranks (`bool`, *optional*, defaults to `True`): under `torch.distributed`, take every decision from rank
            0 (one broadcast per pruning step) so that ranks never disagree on the zero groups.
        operators (`Sequence[Operator]`, *optional*): erasable operators (`oto_hf.find_operators`, priced on the inputs
            of `group_costs`): with `erase` they compete with single groups for the target (H2SPG, `operator_erasing`).
        erase (`bool`, *optional*, defaults to `True`): let `operators` be erased; `False` narrows only.

    Example:

    ```python
    >>> optimizer = DHSPG.from_model(model, groups, lr=1e-4, target_sparsity=0.3, partition_steps=100,
    ...     pruning_end_steps=1000, min_heads_per_layer=1)
    >>> for batch in loader:
    ...     model(**batch).loss.backward()
    ...     optimizer.step()
    ...     optimizer.zero_grad()
    >>> optimizer.group_sparsity()
    0.3
    ```
    """

    def __init__(
        self,
        params: ParamsT,
        groups: Sequence[ZeroInvariantGroup],
        named_parameters: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
        lr: float = 1e-3,
        *,
        variant: str = DEFAULTS.variant,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        dampening: float = 0.0,
        nesterov: bool = False,
        target_sparsity: float = DEFAULTS.target_sparsity,
        sparsity_budget: str = DEFAULTS.sparsity_budget,
        group_costs: Sequence[float] | torch.Tensor | None = None,
        budget_total: float | None = None,
        partition_steps: int = DEFAULTS.partition_steps,
        pruning_end_steps: int | None = None,
        num_partition_periods: int | None = DEFAULTS.num_partition_periods,
        lambda_: float | None = DEFAULTS.lambda_,
        lambda_amplify: float | None = DEFAULTS.lambda_amplify,
        lambda_cap: float | None = DEFAULTS.lambda_cap,
        epsilon: float = DEFAULTS.epsilon,
        final_epsilon: float | None = DEFAULTS.final_epsilon,
        tolerance: float = DEFAULTS.tolerance,
        saliency: str = DEFAULTS.saliency,
        importance_window: int = DEFAULTS.importance_window,
        saliency_cosine_weight: float = DEFAULTS.saliency_cosine_weight,
        saliency_magnitude_weight: float = DEFAULTS.saliency_magnitude_weight,
        min_heads_per_layer: int = DEFAULTS.min_heads_per_layer,
        min_neurons_per_layer: int = DEFAULTS.min_neurons_per_layer,
        min_channels_per_layer: int = DEFAULTS.min_channels_per_layer,
        max_family_sparsity: float = DEFAULTS.max_family_sparsity,
        never_empty: Sequence[FamilyKey] = (),
        uniform_widths: bool = DEFAULTS.uniform_widths,
        round_to: Mapping[str, int | str] | None = DEFAULTS.round_to,
        lambda_schedule: str = DEFAULTS.lambda_schedule,
        foreach: bool | None = None,
        sync_ranks: bool = True,
        operators: Sequence[Operator] = (),
        erase: bool = True,
        importance_source: OutputImportance | SampleFisher | None = None,
    ) -> None:
        if pruning_end_steps is None:
            raise TypeError("DHSPG needs `pruning_end_steps`: the number of steps after which the target is met.")
        check_dhspg_settings(settings := {name: value for name, value in locals().items() if name in SETTING_NAMES})
        check_erasing(erase, settings if operators else {})  # settings that clash with erasing matter with operators
        self._lambda_rule = LambdaRule.for_variant(variant, lambda_, lambda_amplify, lambda_cap)

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
        budget = family_budget(self._budget) if (erase := erase and bool(operators)) else self._budget
        self._families = FamilyConstraints.from_settings(groups, budget, settings, never_empty).to(device)
        self._budget = self._families.planned_budget(self._budget)
        self._nests = QueryHeadNests.from_groups(groups)
        self._costs = self._budget.costs.to(device)
        self._numel = self._index.group_numel

        self.target_sparsity = target_sparsity
        self.sparsity_budget = sparsity_budget
        window = (partition_steps, pruning_end_steps, num_partition_periods)
        self._schedule = PruningSchedule.resolve(*window, lambda_schedule, importance_window, epsilon, final_epsilon)
        self._saliency_weights = (float(saliency_cosine_weight), float(saliency_magnitude_weight))
        self.saliency = saliency
        if saliency == "auto":
            raise ValueError(
                "`saliency='auto'` chooses from the model: build the optimizer with `DHSPG.from_model` (or "
                "`OTOTrainer`), or name a saliency ('fisher', 'kfac', ...)."
            )
        if (saliency in HOOKED_SALIENCIES) != (importance_source is not None):
            raise ValueError(
                "`importance_source` (an `OutputImportance` or `SampleFisher`) goes with `saliency='kfac'`, 'output' "
                "or 'sample_fisher' only, and they need one."
            )
        self._source = importance_source
        self.uniform_widths = uniform_widths
        self.lambda_schedule = lambda_schedule
        self.sync_ranks = sync_ranks
        self._erasing = OperatorErasing(groups, operators, named_parameters, self._budget, self._families,
                                        self._schedule, sync_ranks) if erase else None  # fmt: skip

        # Run state (all in `state_dict()`).
        self._num_steps = 0
        self._groups = GroupState.initial(self._index.num_groups, self._families, device)
        self._follow_schedule()

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
            self._costs = self._costs.to(device)

    @classmethod
    def from_model(
        cls, model: nn.Module, groups: Sequence[ZeroInvariantGroup], *, weight_decay: float = 0.0, **kwargs: Any
    ) -> DHSPG:
        """Build a DHSPG over every trainable parameter of `model`.

        Parameters with fewer than two dims (biases, norm weights) go to a parameter group without weight decay, as in
        `transformers.Trainer`; the others get `weight_decay`. The other keyword arguments are those of `DHSPG`;
        `saliency="auto"` is resolved here, and `"kfac"` / `"output"` / `"sample_fisher"` get their hooks
        (`importance_source_for`) unless a source is given.
        """
        trainable = [p for p in model.parameters() if p.requires_grad]
        params: list[dict[str, Any]] = [
            {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
        ]
        params = [group for group in params if group["params"]]
        if "saliency" in kwargs:
            erasing = kwargs.get("erase", True) and bool(kwargs.get("operators"))
            kwargs["saliency"] = choose_saliency(kwargs["saliency"], model, groups, erasing)
        if kwargs.get("importance_source") is None:
            saliency = kwargs.get("saliency", DEFAULTS.saliency)
            kwargs["importance_source"] = importance_source_for(saliency, model, groups)
        return cls(params, groups, model.named_parameters(remove_duplicate=False), weight_decay=weight_decay, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group after checking its hyperparameters; groups added after construction are not pruned."""
        super().add_param_group(param_group)
        base_steps.check_hyperparameters(self.param_groups[-1], len(self.param_groups) - 1)

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
        step, schedule = self._num_steps, self._schedule
        if not self._budget.active or step < schedule.partition_steps:
            # Importance is accumulated over the pruning steps and the warm-up steps of `importance_from` on.
            if self._budget.active and self.saliency == "fisher" and step >= schedule.importance_from:
                params, grads = self._local_tensors()
                self._accumulate_importance(importance_statistics(self._index, params, grads, self._scratch))
            self._base_step(masked=False)
        elif step < schedule.pruning_end_steps:
            self._pruning_step(step)
        else:
            self._base_step(masked=True)
        if self._erasing:
            self._erasing.after_step(step)
        self._num_steps += 1
        self._follow_schedule()
        return loss

    def _follow_schedule(self) -> None:
        """Record output importance only over the steps that score groups (warm-up window and pruning); remove its
        hooks once the zero set is final."""
        if self._source is not None:
            window = self._schedule.importance_from <= self._num_steps < self._schedule.pruning_end_steps
            self._source.active = self._budget.active and window
            if self._num_steps >= self._schedule.pruning_end_steps:
                self._source.remove()

    def _local_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """The local shards of the grouped parameters and of their gradients, in `self._index.params` order."""
        params = self._index.params
        return [local(p) for p in params], [None if p.grad is None else local(p.grad) for p in params]

    def _with_grads(
        self, group: dict[str, Any], keep: torch.Tensor | None = None
    ) -> Iterator[tuple[int | None, torch.Tensor, torch.Tensor, dict]]:
        """`(position among the grouped parameters or None, local parameter, local gradient, state)` of every
        parameter of `group` that has a gradient, its state created if needed; grouped gradients times `keep`."""
        for param in group["params"]:
            if param.grad is not None:
                state = self.state[param]
                base_steps.init_state(self.variant, param, state)
                position, grad = self._position.get(id(param)), local(param.grad)
                if keep is not None and position is not None:
                    # Zero gradients keep the weights and the state of zero groups exactly zero.
                    grad = grad * self._index.expand(keep, position, torch.mul).to(grad.dtype)
                yield position, local(param), grad, state

    def _base_step(self, masked: bool) -> None:
        keep = extend((~self._groups.zero).float(), 1.0) if masked else None
        for group in self.param_groups:
            params, grads, states = _columns(list(self._with_grads(group, keep)))
            base_steps.update(self.variant, params, grads, states, group, self.foreach, self._scratch.like)

    def _accumulate_importance(self, xg: torch.Tensor) -> None:
        """Add `<x_g, grad_g>^2` (the squared gradient of a mask on each group) to the running importance."""
        self._groups.importance += xg.square()
        self._groups.importance_steps += 1
        if self._erasing:
            self._erasing.accumulate(xg)

    def _scores(self, stats: dict[str, torch.Tensor], zero: torch.Tensor) -> torch.Tensor:
        """Redundancy scores (high: remove first) by the chosen saliency; on the CPU."""
        if self.saliency in ("fisher", *HOOKED_SALIENCIES):
            return importance_scores(self.importance, self._costs, zero)
        return redundancy_scores(stats, self._numel, zero, self._saliency_weights)

    def _pruning_step(self, step: int) -> None:
        partition = step in self._schedule.partition_points
        deadline = step == self._schedule.pruning_end_steps - 1
        params, grads = self._local_tensors()
        fisher = self.saliency == "fisher"
        # <x, grad> first: the directions then overwrite the gradients of grouped parameters.
        importance = importance_rows(self._index, params, grads, self._scratch) if fisher else None
        directions, decays, lrs = self._directions()
        stats = pruning_statistics(self._index, params, directions, decays, lrs, importance=importance,
                                   with_l1=partition or deadline, scratch=self._scratch)  # fmt: skip
        if fisher:
            self._accumulate_importance(stats["xg"])
        if partition:
            self._partition(stats, step)
        zero, coef = self._zero_mask(stats, step, deadline)
        keep = extend((~zero).float(), 1.0)
        apply_step(self._index, params, directions, decays, lrs, keep, extend(coef, 0.0))
        if deadline:
            # The state of zero groups is cleared once, when the zero set is final; before, their updates are masked.
            for position, param in enumerate(self._index.params):
                keep_p = self._index.expand(keep, position, torch.mul)
                for tensor in base_steps.state_tensors(self.state[param]):
                    tensor.mul_(keep_p.to(tensor.dtype))

    def _directions(self) -> tuple[list[torch.Tensor | None], list[float], list[float]]:
        """Take the base step of the parameters outside all groups; return the base direction, decay and learning rate
        of each grouped parameter (`None`, 0 and 0 without a gradient), in `self._index.params` order."""
        num = len(self._index.params)
        directions: list[torch.Tensor | None] = [None] * num
        decays, lrs = [0.0] * num, [0.0] * num
        for group in self.param_groups:
            entries = list(self._with_grads(group))
            plain = _columns([e for e in entries if e[0] is None])
            base_steps.update(self.variant, *plain, group, self.foreach, self._scratch.like)
            grouped = [e for e in entries if e[0] is not None]
            params, grads, states = _columns(grouped)
            consume = base_steps.can_hold_directions(params, grads)
            group_directions, decay = base_steps.directions(
                self.variant, params, grads, states, group, self.foreach, consume_grads=consume
            )
            for (position, *_), direction in zip(grouped, group_directions, strict=True):
                directions[position], decays[position], lrs[position] = direction, decay, group["lr"]
        return directions, decays, lrs

    def _zero_mask(
        self, stats: dict[str, torch.Tensor], step: int, deadline: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Penalise the redundant groups and decide the zero groups after this step (at the deadline, the target's
        rest is forced); returns the zero mask and the per-group penalty coefficient."""
        zero, coef, self._groups.lambdas = penalise(
            stats,
            self._groups,
            self._lambda_rule,
            self._budget,
            self._costs,
            self._families,
            self.lambda_schedule == "progressive",
            self._schedule.epsilon_at(step),
            step,
        )
        if deadline:
            scores = self._scores(stats, zero)
            chosen = deadline_projection(
                zero, scores, self._groups.redundant, self._families, self._budget, self.sync_ranks, step
            )
            chosen = self._nests.even_out(zero, chosen, scores, self._families)
            zero = zero | chosen
            self._groups.num_forced = int(chosen.sum())
            self._groups.final_num_zero_groups = int(zero.sum())
        if self.sync_ranks:
            (zero,) = from_first_rank(zero)
        self._groups.zero = zero
        return zero, coef

    def _partition(self, stats: dict[str, torch.Tensor], step: int) -> None:
        """Re-score, re-choose the redundant set and, with the progressive schedule, mark the next quota due."""
        scores = self._scores(stats, self._groups.zero)
        if self._erasing:
            scores, self._budget = self._erasing.partition(self._groups, scores, self.importance, self._budget,
                                                           stats["xx"].sqrt(), step)  # fmt: skip
        self._families.replan(scores, self._groups.zero | self._groups.due, self._budget, self.sync_ranks)
        redundant, priority = choose_redundant_set(
            self._groups, scores, self._families, self._budget, self.sync_ranks, step
        )
        self._groups.importance.zero_()
        self._groups.importance_steps = 0
        if self._source is not None:
            self._source.reset()
        if self.lambda_schedule != "progressive":
            return
        points = self._schedule.partition_points
        period = points.index(step)
        mark_next_quota(
            self._groups, scores, redundant, priority, self._families, self._budget, stats["xx"].sqrt(),
            period=period, num_periods=len(points), step=step, ramp_end=self._schedule.ramp_end(period),
            uniform_widths=self._families.exact, sync=self.sync_ranks, nests=self._nests,
        )  # fmt: skip

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """The `torch.optim` state dict plus a `"dhspg"` entry: the step count and the run state
        (`group_state.GroupState.to_dict`); it loads with `torch.load(path, weights_only=True)`."""
        state = super().state_dict()
        state["dhspg"] = {**self._groups.to_dict(self._families), "num_steps": self._num_steps}
        if self._erasing:
            state["dhspg"]["erasing"] = self._erasing.to_dict()
        if self._source is not None:
            state["dhspg"]["output_importance"] = self._source.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state dict written by `state_dict()` of a DHSPG over the same parameters and groups."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("dhspg", None)
        if extra is None:
            raise ValueError("This state dict has no 'dhspg' entry: it was not written by `DHSPG.state_dict()`.")
        if self._families.rounded:  # the quotas of the last partition's `round_to` plan
            self._families.set_quotas(extra["family_max_zero"])
        groups = GroupState.from_dict(extra, self._families, self._groups.zero.device)
        super().load_state_dict(state_dict)
        self._groups = groups
        self._num_steps = int(extra["num_steps"])
        if self._erasing:
            self._budget = self._erasing.load(extra, self._budget)
        if self._source is not None:
            self._source.load_state_dict(extra["output_importance"])
        self._follow_schedule()

    def state_nbytes(self) -> int:
        """Bytes of all tensors this optimizer keeps between steps: per-parameter state, group state, the index and the
        scratch buffer of the statistics."""
        per_param = sum(
            local(value).numel() * local(value).element_size()
            for state in self.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor)
        )
        per_group = self._groups.nbytes() + self._costs.numel() * self._costs.element_size()
        return per_param + per_group + self._index.index_nbytes() + self._scratch.nbytes()


def _columns(entries: list[tuple[int | None, torch.Tensor, torch.Tensor, dict[str, Any]]]) -> _Lists:
    """The `(params, grads, states)` lists of `DHSPG._with_grads` entries."""
    return [e[1] for e in entries], [e[2] for e in entries], [e[3] for e in entries]
