"""Channel elements, their unions and the reasons that make some of them unprunable.

Every prunable index of every tensor is an *element*: element ids for `(tensor_name, dim)` form one contiguous block.
Propagating labels through the graph records which elements must be removed together (edges) and which cannot be
removed at all (poison). Connected components of the edge graph are the zero-invariant groups.

Two activations contracted together (a query head with the key and value heads it attends with) are *paired*. A
pairing is a plain tie, except in one pattern: several row-side components (query heads) each paired with every
component of one col-side set (the key and value rows of one KV head), with no component on both sides. That is
grouped-query attention: the key/value side becomes one group (the KV group) and each query head a group of its own,
nested in it (`ChannelRegistry.nests`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ElementBlock:
    """The elements of one `(tensor, dim)`: ids `offset .. offset + size - 1`."""

    name: str
    dim: int
    size: int
    offset: int
    is_buffer: bool


class ChannelRegistry:
    """Allocates element ids, records unions between them and poison with reasons."""

    def __init__(self) -> None:
        self.blocks: list[ElementBlock] = []
        self._block_index: dict[tuple[str, int], ElementBlock] = {}
        self.num_elements = 0
        self._edges: list[torch.Tensor] = []
        self._poison_ids: list[torch.Tensor] = []
        self._poison_reasons: list[str] = []
        self._attention_ids: list[torch.Tensor] = []
        self._shared_edges: list[torch.Tensor] = []
        self._pair_edges: list[torch.Tensor] = []
        self.nests: dict[int, int] = {}  # after `components()`: child component -> its parent (KV group) component

    def elements(self, name: str, dim: int, size: int, is_buffer: bool = False) -> torch.Tensor:
        """Element ids of `name` along `dim`, allocating them on first use."""
        block = self._block_index.get((name, dim))
        if block is None:
            block = ElementBlock(name, dim, size, self.num_elements, is_buffer)
            self.blocks.append(block)
            self._block_index[(name, dim)] = block
            self.num_elements += size
        elif block.size != size:
            raise RuntimeError(f"Dimension {dim} of {name} seen with sizes {block.size} and {size}.")
        return torch.arange(block.offset, block.offset + size)

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Tie elements pairwise (entries < 0 are ignored; shapes must broadcast)."""
        a, b = torch.broadcast_tensors(a, b)
        keep = (a >= 0) & (b >= 0) & (a != b)
        if keep.any():
            keys = (a[keep] << 32 | b[keep]).unique()  # one int64 per pair: a 1-D unique is much faster
            self._edges.append(torch.stack([keys >> 32, keys & 0xFFFFFFFF]))

    def union_along(self, labels: torch.Tensor, dim: int, ids: torch.Tensor, shared: bool = False) -> None:
        """Tie every entry at index i of `labels` along `dim` with `ids[i]` (see `union_shared` for `shared`)."""
        shape = [1] * labels.dim()
        shape[dim] = -1
        if shared:
            self.union_shared(ids.reshape(shape), labels)
        else:
            self.union(labels, ids.reshape(shape))

    def union_shared(self, parameter_ids: torch.Tensor, labels: torch.Tensor) -> None:
        """Tie parameter entries to the channels they meet, but only if those channels end up in one group.

        A parameter broadcast over channels (one norm weight for every head) serves several groups with each entry:
        such an entry is kept whole, outside every group, and the groups stay apart. If everything it meets is one
        group anyway (a per-head gate bias broadcast over the head's own channels), it joins that group.
        """
        a, b = torch.broadcast_tensors(parameter_ids, labels)
        keep = (a >= 0) & (b >= 0)
        if keep.any():
            keys = (a[keep] << 32 | b[keep]).unique()
            self._shared_edges.append(torch.stack([keys >> 32, keys & 0xFFFFFFFF]))

    def pair(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Pair the elements of a contraction's rows (the side whose labels the output keeps) with its columns.

        Pairs are ties (`union`) unless they form nested groups (see the module docstring).
        """
        rows, cols = torch.broadcast_tensors(rows, cols)
        keep = (rows >= 0) & (cols >= 0) & (rows != cols)
        if keep.any():
            keys = (rows[keep] << 32 | cols[keep]).unique()
            self._pair_edges.append(torch.stack([keys >> 32, keys & 0xFFFFFFFF]))

    def poison(self, ids: torch.Tensor, reason: str) -> None:
        """Mark elements (entries < 0 are ignored) as unprunable."""
        ids = ids[ids >= 0].unique() if ids.numel() else ids
        if ids.numel():
            self._poison_ids.append(ids)
            self._poison_reasons.append(reason)

    def mark_attention(self, ids: torch.Tensor) -> None:
        """Remember elements that flow through an attention contraction (their groups are heads)."""
        ids = ids[ids >= 0]
        if ids.numel():
            self._attention_ids.append(ids.unique())

    def components(self) -> torch.Tensor:
        """Component id (the smallest element id in it) of every element.

        Shared parameter entries (`union_shared`) join the one group they meet; entries that meet several groups
        are poisoned here (kept whole), which leaves the groups apart. Pairs become ties or nests (`self.nests`, by
        component id).
        """
        self._resolve_pairs(self._connect(self._edges))
        labels = self._connect(self._edges)
        if self._shared_edges:
            shared = torch.cat(self._shared_edges, dim=1)
            self._shared_edges = []
            parameter, other = shared[0], labels[shared[1]]
            low = torch.full((self.num_elements,), self.num_elements).scatter_reduce(
                0, parameter, other, reduce="amin"
            )
            high = torch.full((self.num_elements,), -1).scatter_reduce(0, parameter, other, reduce="amax")
            single = low[parameter] == high[parameter]
            self._edges.append(shared[:, single])
            split = parameter[~single].unique()
            if split.numel():
                self._poison_ids.append(split)
                self._poison_reasons.append(
                    "a parameter shared by several groups (e.g. one norm weight for all heads)"
                )
            labels = self._connect(self._edges)
        self.nests = {int(labels[child]): int(labels[parent]) for child, parent in self.nests.items()}
        return labels

    def _resolve_pairs(self, labels: torch.Tensor) -> None:
        """Turn the pairs into ties, or into nests where they have the grouped-query pattern (module docstring)."""
        if not self._pair_edges:
            return
        pairs = torch.cat(self._pair_edges, dim=1)
        self._pair_edges = []
        comp_pairs = torch.stack([labels[pairs[0]], labels[pairs[1]]])
        keys = (comp_pairs[0] << 32 | comp_pairs[1]).unique()
        comp_pairs = torch.stack([keys >> 32, keys & 0xFFFFFFFF])
        linked = self._connect([comp_pairs])
        sets: dict[int, tuple[set[int], set[int], set[tuple[int, int]]]] = {}
        for row, col in comp_pairs.t().tolist():
            rows, cols, seen = sets.setdefault(int(linked[row]), (set(), set(), set()))
            rows.add(row)
            cols.add(col)
            seen.add((row, col))
        ties: list[tuple[int, int]] = []
        nests: dict[int, int] = {}
        for rows, cols, seen in sets.values():
            if len(rows) >= 2 and rows.isdisjoint(cols) and len(seen) == len(rows) * len(cols):
                parent, *others = sorted(cols)
                ties.extend((parent, other) for other in others)
                nests.update((row, parent) for row in rows)
            else:
                ties.extend(seen)
        if ties:
            self._edges.append(torch.tensor(ties, dtype=torch.long).t())
        self.nests = nests

    def _connect(self, edge_list: list[torch.Tensor]) -> torch.Tensor:
        labels = torch.arange(self.num_elements)
        if not edge_list:
            return labels
        edges = torch.cat(edge_list, dim=1)
        src, dst = edges[0], edges[1]
        while True:
            previous = labels
            labels = labels.clone()
            labels.scatter_reduce_(0, src, previous[dst], reduce="amin")
            labels.scatter_reduce_(0, dst, previous[src], reduce="amin")
            labels = labels[labels]  # pointer jumping
            if torch.equal(labels, previous):
                return labels

    def poison_reasons(self, components: torch.Tensor) -> dict[int, str]:
        """The first reason (in recording order) that poisons each poisoned component."""
        if not self._poison_ids:
            return {}
        ids = torch.cat(self._poison_ids)
        order = torch.cat([torch.full((t.numel(),), i) for i, t in enumerate(self._poison_ids)])
        first = torch.full((self.num_elements,), len(self._poison_reasons), dtype=torch.long)
        first.scatter_reduce_(0, components[ids], order, reduce="amin")
        poisoned = (first < len(self._poison_reasons)).nonzero().flatten()
        return {int(c): self._poison_reasons[int(first[c])] for c in poisoned}

    def attention_components(self, components: torch.Tensor) -> set[int]:
        if not self._attention_ids:
            return set()
        return set(components[torch.cat(self._attention_ids)].unique().tolist())

    def block_of(self, element_ids: torch.Tensor) -> torch.Tensor:
        """Index into `self.blocks` of each element id."""
        offsets = torch.tensor([block.offset for block in self.blocks])
        return torch.searchsorted(offsets, element_ids, right=True) - 1
