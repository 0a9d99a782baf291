"""`discover_groups`: zero-invariant groups straight from the model's traced graph."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .channels import ChannelRegistry
from .export import default_example_inputs, export_model
from .groups import (
    GROUP_KINDS,
    KV_HEAD,
    GroupSet,
    TensorSlice,
    UnprunableComponent,
    ZeroInvariantGroup,
    check_kinds,
)
from .propagate import check_sliceable, propagate

logger = logging.getLogger(__name__)

# The families whose removal breaks the model, with the error (`oto_hf.subnet.unremovable_families`).
RemovabilityProbe = Callable[[nn.Module, GroupSet], Mapping[tuple, str]]


def discover_groups(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    prune_kinds: Iterable[str] | None = None,
    show_progress: bool | None = None,
    probe: RemovabilityProbe | None = None,
) -> GroupSet:
    """Find the zero-invariant groups of `model` from its `torch.export` graph: the graph layer's part of
    `oto_hf.discover_groups`, which documents the other arguments and adds the probe of `oto_hf.subnet` (above this
    layer).

    Channel identity is propagated from producers (linear, conv, embedding) through shape-preserving and elementwise
    ops, reshapes into heads, attention, residual adds, concatenation and normalisation to the consumers. Whatever
    cannot be proven removable (an unknown op, a norm over the channels, a model output, the residual stream) is
    listed in `GroupSet.unprunable` with the reason.

    Args:
        probe (`Callable[[nn.Module, GroupSet], Mapping[tuple, str]]`, *optional*): finds the families whose removal
            breaks the model (keyed as in `GroupSet.families()`, with the error); their groups move to `unprunable`.
            Skipped on the `meta` device.
    """
    prune_kinds = GROUP_KINDS if prune_kinds is None else check_kinds(prune_kinds)
    if example_inputs is None:
        example_inputs = default_example_inputs(model)
    program = export_model(model, example_inputs)
    propagation = propagate(program, show_progress=show_progress)
    registry = propagation.registry
    components = registry.components()
    check_sliceable(propagation, components)
    reasons = _share_within_nests(registry.nests, registry.poison_reasons(components))
    groups = _build_groups(registry, components, set(reasons), propagation.tensor_ndims, model)
    groups, single_kv = _split_single_kv_groups(groups)
    unprunable = _unprunable(registry, components, reasons) + single_kv
    result = GroupSet(groups, unprunable, example_inputs).select(kinds=prune_kinds)
    if not result:
        details = (
            "\n".join(f"  - {c.reason}" for c in result.unprunable[:10]) or "  (no linear, conv or embedding found)"
        )
        raise ValueError(
            f"{type(model).__name__} has nothing prunable of kinds {list(prune_kinds)}: no group of weights can be "
            f"removed without changing its outputs. Reasons found:\n{details}\nIf a custom op hides the structure, "
            "register a rule for it with `oto_hf.register_op_rule`."
        )
    if probe is not None and not any(p.is_meta for p in model.parameters()):
        result = _drop_unremovable(model, result, probe(model, result))
    logger.info("%s", result.summary())
    return result


def _drop_unremovable(model: nn.Module, groups: GroupSet, failures: Mapping[tuple, str]) -> GroupSet:
    """The families the probe found unremovable become unprunable, with the error."""
    if not failures:
        return groups
    families = groups.families()
    dropped = {g.id for key in failures for g in families[key]}
    kept = groups.select(where=lambda group: group.id not in dropped).groups
    unprunable = list(groups.unprunable)
    for key, error in failures.items():
        first = families[key][0]
        logger.warning(
            "Leaving out the %ss of %s: removing them breaks the model (%s)", first.kind, first.module, error
        )
        unprunable.append(
            UnprunableComponent(
                f"removing {first.kind}s of '{first.module}' breaks the model's forward ({error}); a width the model "
                "computes from something oto_hf does not change",
                sorted({s.name for s in first.slices}),
            )
        )
    if not kept:
        details = "\n".join(f"  - {c.reason}" for c in unprunable[-10:])
        raise ValueError(
            f"{type(model).__name__} has nothing prunable: every group discovery found breaks the model when "
            f"removed:\n{details}"
        )
    return GroupSet(kept, unprunable, groups.example_inputs)


def _share_within_nests(nests: Mapping[int, int], reasons: dict[int, str]) -> dict[int, str]:
    """A KV group and its query heads are removable only together: one unprunable member makes them all so."""
    members: dict[int, list[int]] = defaultdict(list)
    for child, parent in nests.items():
        members[parent].append(child)
    for parent, children in members.items():
        found = next((reasons[c] for c in [parent, *children] if c in reasons), None)
        if found is not None:
            reasons.update({c: reasons.get(c, found) for c in [parent, *children]})
    return reasons


def _split_single_kv_groups(groups: list[ZeroInvariantGroup]) -> tuple[list[ZeroInvariantGroup], list]:
    """The KV group of an attention layer with one KV head (MQA) is the whole attention: removing it would remove
    every query head. It stays out of the groups (its query heads are groups of their own)."""
    families: dict[tuple, list[ZeroInvariantGroup]] = defaultdict(list)
    for group in groups:
        if group.kind == KV_HEAD:
            families[tuple(sorted((s.name, s.dim) for s in group.slices))].append(group)
    single = {id(members[0]) for members in families.values() if len(members) == 1}
    unprunable = [
        UnprunableComponent(
            f"the only removable key/value head of the attention in '{group.module}' (e.g. multi-query attention): "
            "removing it removes every query head; its query heads are groups of their own",
            sorted({s.name for s in group.slices}),
        )
        for group in groups
        if id(group) in single
    ]
    return [g for g in groups if id(g) not in single], unprunable


def _build_groups(
    registry: ChannelRegistry,
    components: torch.Tensor,
    poisoned: set[int],
    tensor_ndims: dict[str, int],
    model: nn.Module,
) -> list[ZeroInvariantGroup]:
    elements = torch.arange(registry.num_elements)
    keep = ~torch.isin(components, torch.tensor(sorted(poisoned), dtype=torch.long))
    elements, comps = elements[keep], components[keep]
    if not elements.numel():
        return []
    blocks = registry.block_of(elements)
    order = torch.argsort(comps * registry.num_elements + elements)
    elements, comps, blocks = elements[order], comps[order], blocks[order]
    offsets = torch.tensor([b.offset for b in registry.blocks])
    local = elements - offsets[blocks]
    run_keys = comps * len(registry.blocks) + blocks
    _, run_counts = torch.unique_consecutive(run_keys, return_counts=True)
    run_starts = torch.cumsum(run_counts, 0) - run_counts
    run_comps = comps[run_starts].tolist()
    run_blocks = blocks[run_starts].tolist()
    run_indices = torch.split(local, run_counts.tolist())
    attention = registry.attention_components(components)
    numels = _numels(model)
    parents = set(registry.nests.values())
    nest_of = {parent: index for index, parent in enumerate(sorted(parents))}
    nest_of.update({child: nest_of[parent] for child, parent in registry.nests.items()})

    groups: list[ZeroInvariantGroup] = []
    current: int | None = None
    for comp, block_index, indices in zip(run_comps, run_blocks, run_indices):
        block = registry.blocks[block_index]
        if comp != current:
            current = comp
            group = ZeroInvariantGroup(id=len(groups), kind="neuron", layer=None, module="", slices=[])
            group.kind = KV_HEAD if comp in parents else "head" if comp in attention else "neuron"
            group.nest = nest_of.get(comp)
            groups.append(group)
        item = TensorSlice(block.name, block.dim, indices)
        if block.is_buffer:
            group.buffer_slices.append(item)
        else:
            group.slices.append(item)
            group.num_params += len(indices) * numels.get(block.name, 0) // max(block.size, 1)
            if group.kind == "neuron" and tensor_ndims.get(block.name, 2) >= 3:
                group.kind = "channel"
    groups = [g for g in groups if g.slices]
    _assign_layers(groups)
    return groups


def _numels(model: nn.Module) -> dict[str, int]:
    numels = {name: p.numel() for name, p in model.named_parameters(remove_duplicate=False)}
    numels.update({name: b.numel() for name, b in model.named_buffers(remove_duplicate=False)})
    return numels


_NUMERIC = re.compile(r"^\d+$")


def _assign_layers(groups: list[ZeroInvariantGroup]) -> None:
    """`module` is the deepest numbered block holding all of a group's tensors; `layer` numbers those blocks."""
    cache: dict[tuple[str, ...], str] = {}
    order: dict[str, int] = {}
    for group in groups:
        names = tuple(sorted({s.name for s in group.slices}))
        module = cache.get(names)
        if module is None:
            module = cache[names] = _block_path(names)
        group.module = module
        if any(_NUMERIC.match(part) for part in module.split(".")):
            group.layer = order.setdefault(module, len(order))


def _block_path(names: tuple[str, ...]) -> str:
    parts = [name.split(".")[:-1] for name in names]
    common: list[str] = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    numeric = [i for i, part in enumerate(common) if _NUMERIC.match(part)]
    return ".".join(common[: numeric[-1] + 1] if numeric else common)


def _unprunable(
    registry: ChannelRegistry, components: torch.Tensor, reasons: dict[int, str]
) -> list[UnprunableComponent]:
    if not reasons:
        return []
    poisoned = torch.tensor(sorted(reasons), dtype=torch.long)
    tensors: dict[str, set[str]] = defaultdict(set)
    for block in registry.blocks:
        comps = components[block.offset : block.offset + block.size].unique()
        for comp in comps[torch.isin(comps, poisoned)].tolist():
            tensors[reasons[comp]].add(block.name)
    return [UnprunableComponent(reason, sorted(names)) for reason, names in tensors.items()]
