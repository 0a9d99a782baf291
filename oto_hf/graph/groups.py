"""Zero-invariant groups (ZIGs) and the set of them found in a model."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

GroupKind = Literal["head", "kv_head", "neuron", "channel"]
# The kinds users choose (`prune_kinds`); "head" covers the KV groups ("kv_head") that query heads are nested in.
GROUP_KINDS: tuple[str, ...] = ("head", "neuron", "channel")
KV_HEAD = "kv_head"
ALL_KINDS: tuple[str, ...] = ("head", KV_HEAD, "neuron", "channel")


@dataclass(frozen=True)
class TensorSlice:
    """Indices `indices` along dimension `dim` of the parameter or buffer called `name`."""

    name: str
    dim: int
    indices: torch.Tensor

    def __iter__(self) -> Iterator[Any]:
        # Lets a slice unpack as `(name, dim, indices)`.
        return iter((self.name, self.dim, self.indices))


@dataclass
class ZeroInvariantGroup:
    """One unit (an attention head, an FFN neuron, a conv channel) that can be removed as a whole.

    In grouped-query attention (GQA, MQA) each query head is a group of kind `"head"` (its query rows and output
    columns), nested in the group of kind `"kv_head"` of the key and value heads it shares with the other query heads
    of its KV group: removing a KV group removes its query heads, and a KV group whose query heads are all removed
    goes too. The two share `nest`.

    Args:
        id (`int`): position of the group in its `GroupSet`.
        kind (`str`): `"head"`, `"kv_head"`, `"neuron"` or `"channel"`.
        layer (`int`, *optional*): ordinal of the block (e.g. transformer layer) the group lives in, `None` outside
            blocks.
        module (`str`): module path of that block, e.g. `"encoder.layer.3"`.
        slices (`list[TensorSlice]`): the parameter slices; each unpacks as `(parameter_name, dim, indices)`.
        buffer_slices (`list[TensorSlice]`): buffers sliced with the group (e.g. BatchNorm running statistics);
            they are removed with the group but never zeroed.
        num_params (`int`): number of parameter entries in the group.
        nest (`int`, *optional*): number of the KV group a query head or KV group belongs to (GQA, MQA), shared by the
            KV group and its query heads; `None` for other groups (e.g. a head of multi-head attention).
    """

    id: int
    kind: GroupKind
    layer: int | None
    module: str
    slices: list[TensorSlice]
    buffer_slices: list[TensorSlice] = field(default_factory=list)
    num_params: int = 0
    nest: int | None = None

    def __repr__(self) -> str:
        tensors = ", ".join(f"{s.name}[dim {s.dim}: {_format_indices(s.indices)}]" for s in self.slices)
        nest = "" if self.nest is None else f"nest={self.nest}, "
        return (
            f"ZeroInvariantGroup(id={self.id}, kind={self.kind!r}, layer={self.layer}, params={self.num_params}, "
            f"{nest}{tensors})"
        )


@dataclass
class UnprunableComponent:
    """Channels the analysis cannot prove zero-invariant, with the first reason found and the tensors involved."""

    reason: str
    tensors: list[str]

    def __repr__(self) -> str:
        shown = ", ".join(self.tensors[:4]) + (f", ... ({len(self.tensors)} tensors)" if len(self.tensors) > 4 else "")
        return f"UnprunableComponent(reason={self.reason!r}, tensors=[{shown}])"


class GroupSet(Sequence[ZeroInvariantGroup]):
    """The zero-invariant groups of a model, plus the components left unprunable and why.

    Indexing, `len` and iteration work as for a list of `ZeroInvariantGroup`. `example_inputs` are the inputs the
    model was traced with; `construct_subnet` reuses them to check its result.
    """

    def __init__(
        self,
        groups: Iterable[ZeroInvariantGroup],
        unprunable: Iterable[UnprunableComponent] = (),
        example_inputs: Any = None,
    ) -> None:
        self.groups = list(groups)
        self.unprunable = list(unprunable)
        self.example_inputs = {} if example_inputs is None else example_inputs

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index):  # type: ignore[override]
        return self.groups[index]

    def __iter__(self) -> Iterator[ZeroInvariantGroup]:
        return iter(self.groups)

    @property
    def num_params(self) -> int:
        """Parameter entries covered by all groups."""
        return sum(g.num_params for g in self.groups)

    def counts(self) -> dict[str, int]:
        """Number of groups per kind."""
        return dict(Counter(g.kind for g in self.groups))

    def counts_per_layer(self) -> dict[int | None, dict[str, int]]:
        """Number of groups per layer and kind."""
        table: dict[int | None, Counter] = defaultdict(Counter)
        for group in self.groups:
            table[group.layer][group.kind] += 1
        return {layer: dict(counter) for layer, counter in table.items()}

    def nests(self) -> dict[int, tuple[ZeroInvariantGroup | None, list[ZeroInvariantGroup]]]:
        """Grouped-query attention: for each KV group number (`nest`), its KV group (`None` if not in this set, e.g.
        the only KV head of an MQA layer) and its query heads."""
        found: dict[int, tuple[ZeroInvariantGroup | None, list[ZeroInvariantGroup]]] = {}
        for group in self.groups:
            if group.nest is None:
                continue
            parent, children = found.get(group.nest, (None, []))
            if group.kind == KV_HEAD:
                parent = group
            else:
                children = [*children, group]
            found[group.nest] = (parent, children)
        return found

    def parent_of(self, group_id: int) -> int | None:
        """The id of the KV group a query head is nested in, if that group is in this set."""
        group = self.groups[group_id]
        if group.nest is None or group.kind == KV_HEAD:
            return None
        parent = self.nests()[group.nest][0]
        return None if parent is None else parent.id

    def families(self) -> dict[tuple, list[ZeroInvariantGroup]]:
        """Groups that share the same tensors (the heads of one layer, the neurons of one FFN), keyed by them."""
        families: dict[tuple, list[ZeroInvariantGroup]] = defaultdict(list)
        for group in self.groups:
            families[tuple(sorted((s.name, s.dim) for s in group.slices))].append(group)
        return dict(families)

    def select(
        self,
        kinds: Iterable[str] | None = None,
        ids: Iterable[int] | None = None,
        where: Callable[[ZeroInvariantGroup], bool] | None = None,
    ) -> GroupSet:
        """The groups that pass every filter given, as a new `GroupSet` with ids renumbered 0..n-1 in this order.

        The groups are copies, so this set's ids stay as they are; `unprunable` and `example_inputs` are kept. A KV
        group is kept only with every query head nested in it (removing it removes them).

        Args:
            kinds (`Iterable[str]`, *optional*): keep only these kinds (`"head"`, `"neuron"`, `"channel"`; `"head"`
                includes the KV groups of grouped-query attention).
            ids (`Iterable[int]`, *optional*): keep only the groups with these ids (ids of this set).
            where (`Callable[[ZeroInvariantGroup], bool]`, *optional*): keep only the groups it returns `True` for.

        Example:
        ```python
        >>> in_layers = groups.select(where=lambda group: group.layer is not None)  # e.g. not a classifier's pooler
        >>> heads = groups.select(kinds=["head"])
        ```
        """
        chosen = list(self.groups)
        if kinds is not None:
            kinds = set(check_kinds(kinds))
            chosen = [g for g in chosen if g.kind in kinds or (g.kind == KV_HEAD and "head" in kinds)]
        if ids is not None:
            wanted = set(self.check_ids(ids))
            chosen = [g for g in chosen if g.id in wanted]
        if where is not None:
            chosen = [g for g in chosen if where(g)]
        kept = {g.id for g in chosen}
        whole = {nest for nest, (_, children) in self.nests().items() if all(c.id in kept for c in children)}
        chosen = [g for g in chosen if g.kind != KV_HEAD or g.nest in whole]
        renumbered = [replace(g, id=index) for index, g in enumerate(chosen)]
        return GroupSet(renumbered, self.unprunable, self.example_inputs)

    def summary(self) -> str:
        """A readable table: groups per layer and kind, then the unprunable components with their reasons."""
        lines = [f"GroupSet: {len(self)} groups ({_format_counts(self.counts())}), {self.num_params:,} parameters"]
        for layer, counts in sorted(self.counts_per_layer().items(), key=lambda item: (item[0] is None, item[0] or 0)):
            name = "outside blocks" if layer is None else f"layer {layer}"
            lines.append(f"  {name}: {_format_counts(counts)}")
        if self.unprunable:
            lines.append(f"Unprunable components: {len(self.unprunable)}")
            lines.extend(f"  - {component.reason} ({len(component.tensors)} tensors)" for component in self.unprunable)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def check_ids(self, group_ids: Iterable[int]) -> list[int]:
        """Return `group_ids` as a sorted list of unique ints, raising a clear error for unknown ids."""
        ids = sorted({int(i) for i in group_ids})
        unknown = [i for i in ids if not 0 <= i < len(self)]
        if unknown:
            raise ValueError(
                f"Unknown group ids {unknown[:10]}: this GroupSet has {len(self)} groups, so ids must be in "
                f"[0, {len(self) - 1}]."
            )
        return ids

    @torch.no_grad()
    def zero_(self, model: nn.Module, group_ids: Iterable[int]) -> nn.Module:
        """Set every parameter slice of the given groups to zero, in place. Buffers are left untouched."""
        params = dict(model.named_parameters(remove_duplicate=False))
        for group_id in self.check_ids(group_ids):
            for name, dim, indices in self.groups[group_id].slices:
                param = params[name]
                param.index_fill_(dim, indices.to(param.device), 0)
        return model

    @torch.no_grad()
    def zero_group_ids(self, model: nn.Module) -> list[int]:
        """Ids of the groups whose parameter slices are all exactly zero in `model`."""
        params = dict(model.named_parameters(remove_duplicate=False))
        zero_ids = []
        for group in self.groups:
            if all(
                not params[name].index_select(dim, indices.to(params[name].device)).any()
                for name, dim, indices in group.slices
            ):
                zero_ids.append(group.id)
        return zero_ids


def check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """`kinds` as a tuple, raising a clear error for a kind that is not one of `GROUP_KINDS`."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in kinds if k not in GROUP_KINDS]
    if unknown:
        raise ValueError(f"Unknown group kinds {unknown}; choose from {list(GROUP_KINDS)}.")
    return kinds


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[kind]} {kind}s" for kind in ALL_KINDS if counts.get(kind)) or "none"


def _format_indices(indices: torch.Tensor) -> str:
    values = indices.tolist()
    if len(values) > 1 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}:{values[-1] + 1}"
    return str(values if len(values) <= 6 else values[:3] + ["..."] + values[-2:])
