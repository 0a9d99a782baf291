"""Which layer reads each group, and the saliency `"auto"` picks from that.

A group reaches the rest of the network through the layer that reads it (its *reader*: the `nn.Linear`, or GPT-2's
`Conv1D`, whose input columns it owns, e.g. `o_proj` for a head, `down_proj` for a neuron). The hooked saliencies
(`"sample_fisher"`, `"kfac"`, `"output"`) score groups there, so they need every group to have one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..graph.groups import GroupSet

if TYPE_CHECKING:
    from oto_hf.graph.groups import ZeroInvariantGroup


def _reader_of(module: nn.Module | None, dim: int) -> bool | None:
    """Whether `module` reads a slice along `dim` of its weight as input columns: `False` for `nn.Linear` (dim 1),
    `True` for transformers' `Conv1D` (dim 0, weight transposed), `None` if it does not."""
    if isinstance(module, nn.Linear) and dim == 1:
        return False
    if type(module).__name__ == "Conv1D" and dim == 0:
        return True
    return None


def _read_slices(
    modules: dict[str, nn.Module], group: ZeroInvariantGroup
) -> list[tuple[str, bool, Sequence[int] | torch.Tensor]]:
    """`(reader name, transposed, input columns)` for each slice of `group` that a Linear or Conv1D reads."""
    read = []
    for name, dim, indices in group.slices:
        owner, _, leaf = name.rpartition(".")
        kind = _reader_of(modules.get(owner), dim) if leaf == "weight" else None
        if kind is not None:
            read.append((owner, kind, indices))
    return read


def unread_groups(model: nn.Module, groups: Sequence[ZeroInvariantGroup]) -> list[ZeroInvariantGroup]:
    """The groups that the hooked saliencies cannot score: no `nn.Linear` or `Conv1D` reads them (e.g. conv channels),
    KV groups with query heads of their own excepted (they are scored through those heads)."""
    modules = dict(model.named_modules())
    return [
        group
        for group in groups
        if not _read_slices(modules, group) and not (group.kind == "kv_head" and group.nest is not None)
    ]


def check_every_group_is_read(model: nn.Module, groups: Sequence[ZeroInvariantGroup], saliency: str) -> None:
    """Refuse `saliency` (a hooked one) when some group has no reader, naming the first such group."""
    unread = unread_groups(model, groups)
    if unread:
        raise ValueError(
            f"`saliency='{saliency}'` scores a group through the nn.Linear (or Conv1D) that reads it, but "
            f"{len(unread)} groups have none (first: {unread[0].kind} {unread[0].id}, slices "
            f"{[(n, d) for n, d, _ in unread[0].slices]}). Use `saliency='fisher'` (or 'auto') for this model."
        )


def reader_columns(
    model: nn.Module, groups: Sequence[ZeroInvariantGroup]
) -> dict[str, tuple[nn.Module, bool, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Per reader name: the module, whether its weight is transposed (`Conv1D`), and one block per column width:
    `(group positions (n,), input columns (n, width))`, so that hooks gather every group of a width at once."""
    modules = dict(model.named_modules())
    columns: dict[str, dict[int, list[tuple[int, torch.Tensor]]]] = defaultdict(lambda: defaultdict(list))
    transposed: dict[str, bool] = {}
    for position, group in enumerate(groups):
        for owner, kind, indices in _read_slices(modules, group):
            transposed[owner] = kind
            columns[owner][len(indices)].append((position, torch.as_tensor(indices).flatten().cpu()))
    return {
        owner: (
            modules[owner],
            transposed[owner],
            [
                (torch.tensor([p for p, _ in entries]), torch.stack([c for _, c in entries]))
                for entries in by_width.values()
            ],
        )
        for owner, by_width in columns.items()
    }


def nest_positions(groups: Sequence[ZeroInvariantGroup]) -> list[tuple[int, torch.Tensor]]:
    """`(position of a KV group, positions of its query heads)` for every KV group that is a group itself: a KV group
    has no reader of its own and scores as its query heads, summed."""
    position = {id(group): p for p, group in enumerate(groups)}
    return [
        (position[id(parent)], torch.tensor([position[id(child)] for child in children]))
        for parent, children in GroupSet(groups).nests().values()
        if parent is not None and children
    ]


def choose_saliency(saliency: str, model: nn.Module, groups: Sequence[ZeroInvariantGroup], erase: bool = False) -> str:
    """Resolve `saliency="auto"`: `"output"` when it can score every group, `"fisher"` when some group has no Linear
    reader (conv channels) or whole operators are erased (they are scored by their Fisher importance); any other value
    is returned as given. On SmolLM2-135M `"output"` ranks groups far better than `"fisher"` and better than
    `"sample_fisher"` at 2x; on MiniLM they are close, with `"fisher"` ahead on BoolQ (README, Quality)."""
    if saliency != "auto":
        return saliency
    return "fisher" if erase or unread_groups(model, groups) else "output"
