"""What removing a set of groups really removes when query heads are nested in KV groups (GQA, MQA).

transformers' attention (`repeat_kv`, `enable_gqa`) and the serving engines need the same number of query heads in
every KV group of a layer. `plan_removal` turns the groups asked for into groups that keep this invariant, exactly:

- removing a KV group removes its query heads (their outputs are exactly zero once its value rows are);
- a KV group whose query heads are all removed is removed too (nothing reads its keys and values any more);
- every KV group that stays keeps as many query heads as the one that keeps the most: the others keep some of the
  query heads asked for as *padding*. Padding heads are zero (construction zeroes every group asked for), so they
  add exactly nothing; they are recorded (`LayerWidths.padded`).

DHSPG (`oto_hf.optim.nesting`) zeroes, at its deadline, the query heads that even out the KV groups of each layer, so
a trained model is built without padding, unless a layer's quota (`min_heads_per_layer`) leaves no room. Its FLOP
prices (`oto_hf.group_flop_costs`) add up over a KV group and its query heads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from .families import FamilyKey, family_key
from .groups import GroupSet, ZeroInvariantGroup


@dataclass(frozen=True)
class RemovalPlan:
    """The groups a removal slices away, and the query heads it keeps as zero padding.

    Args:
        removed (`list[int]`): ids sliced away: the groups asked for, plus those implied (`implied`), minus `padded`.
        padded (`list[int]`): ids asked for but kept, zero, so that the KV groups of a layer keep equally many query
            heads.
        implied (`list[int]`): ids not asked for but removed with them (query heads of a removed KV group, a KV group
            left without query heads).
    """

    removed: list[int]
    padded: list[int]
    implied: list[int]


def nested_families(groups: GroupSet) -> dict[FamilyKey, list[tuple[ZeroInvariantGroup | None, list]]]:
    """The query-head families of grouped-query attention (one per attention layer), each with its KV groups: a list
    of (KV group or `None` when it is not in `groups`, its query heads)."""
    families: dict[FamilyKey, list[tuple[ZeroInvariantGroup | None, list]]] = defaultdict(list)
    for parent, children in groups.nests().values():
        if children:
            families[family_key(children[0])].append((parent, children))
    return dict(families)


def plan_removal(groups: GroupSet, ids: Iterable[int]) -> RemovalPlan:
    """What removing the groups `ids` of `groups` removes, keeping every KV group of a layer equally wide (module
    docstring). Groups outside grouped-query attention are removed as asked."""
    requested = set(groups.check_ids(ids))
    removed = set(requested)
    padded: set[int] = set()
    for nests in nested_families(groups).values():
        surviving = []
        for parent, children in nests:
            if parent is not None and (parent.id in requested or all(c.id in requested for c in children)):
                removed.add(parent.id)
                removed.update(c.id for c in children)
            else:
                surviving.append(children)
        if not surviving:
            continue
        # A KV group that cannot be removed (not a group here, e.g. MQA's only KV head) keeps one query head.
        width = max(1, *(sum(c.id not in removed for c in children) for children in surviving))
        for children in surviving:
            back = [c.id for c in children if c.id in removed][: width - sum(c.id not in removed for c in children)]
            padded.update(back)
            removed.difference_update(back)
    return RemovalPlan(sorted(removed), sorted(padded), sorted(removed - requested))
