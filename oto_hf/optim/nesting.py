"""Query heads nested in KV groups (grouped-query attention) in DHSPG: the KV groups of a layer end with equally many
zero query heads.

Building a model needs the same number of query heads in every KV group of a layer; `oto_hf.graph.nesting` pads
uneven ones back with zero query heads, which the budget had counted as removed. `QueryHeadNests.even_out` adds, in
every layer, the most redundant query heads of the KV groups that have fewer zero (or due) query heads than the layer's
most pruned one, so the model is built as trained and removes at least the target. The progressive schedule applies it
to each period's quota (`events.mark_next_quota`), so those heads ramp to zero with the others; the deadline applies it
again to what the deadline itself adds (zeroing live heads at once there cost SmolLM2 most of its quality). It
leaves alone the KV groups that go whole (zero KV group, or every query head zero) and a layer whose family quota
(`min_heads_per_layer`, `max_family_sparsity`) has no room left, and does nothing under exact quotas (`uniform_widths`,
`round_to`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..graph.families import family_key

if TYPE_CHECKING:
    from oto_hf.graph.groups import ZeroInvariantGroup

    from .families import FamilyConstraints

logger = logging.getLogger(__name__)

# One layer: per KV group, the position of the KV group (None when it is not a group) and those of its query heads.
Layer = list[tuple[int | None, torch.Tensor]]


class QueryHeadNests:
    """The KV groups of each attention layer with grouped-query attention, by group position.

    Args:
        layers (`list[list[tuple[int | None, torch.Tensor]]]`): per layer with at least two KV groups, each KV group's
            position (`None` if it is not a group) and its query heads' positions.
    """

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers

    @classmethod
    def from_groups(cls, groups: Sequence[ZeroInvariantGroup]) -> QueryHeadNests:
        """The layers of `groups` (group `i` at position `i`) whose query heads lie in several KV groups."""
        nests: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        for position, group in enumerate(groups):
            nest = getattr(group, "nest", None)
            if nest is not None:
                nests[nest][0 if group.kind == "kv_head" else 1].append(position)
        layers: dict[tuple, Layer] = defaultdict(list)
        for parents, children in nests.values():
            if children:
                key = family_key(groups[children[0]])
                layers[key].append((parents[0] if parents else None, torch.tensor(children, dtype=torch.long)))
        return cls([layer for layer in layers.values() if len(layer) > 1])

    def even_out(
        self, zero: torch.Tensor, chosen: torch.Tensor, scores: torch.Tensor, families: FamilyConstraints
    ) -> torch.Tensor:
        """`chosen` (the deadline's zeros, beside `zero`) plus the query heads that even out every layer (module
        docstring); `scores` rank redundancy (high first)."""
        if not self.layers or families.exact:
            return chosen
        final = (zero | chosen).cpu()
        family_of = families.family_of.cpu()
        room = families.max_zero.cpu() - families.zero_counts(final)
        scores = scores.cpu()
        extra = torch.zeros_like(final)
        for layer in self.layers:
            alive = [
                children
                for parent, children in layer
                if not (parent is not None and bool(final[parent])) and not bool(final[children].all())
            ]
            counts = [int(final[children].sum()) for children in alive]
            need = sum(max(counts, default=0) - count for count in counts)
            family = int(family_of[layer[0][1][0]])
            if need == 0 or need > int(room[family]):
                continue
            for children, count in zip(alive, counts):
                free = children[~final[children]]
                order = free[torch.argsort(scores[free], descending=True, stable=True)]
                extra[order[: max(counts) - count]] = True
            room[family] -= need
        if extra.any():
            logger.info("DHSPG: %d more query heads go, for as many in every KV group", int(extra.sum()))
        return chosen | extra.to(chosen.device)
