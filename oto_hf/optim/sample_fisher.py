"""DHSPG's `saliency="sample_fisher"`: the Fisher information of each group's mask, one sample at a time.

Put a mask `m_g` on what a group writes into the layer that reads it (its *reader*: `o_proj` for a head, `down_proj`
for a neuron). The loss gradient of that mask for one training sequence `i` is

    s_{i,g} = sum_{t in i} a_{t,g} . (dL/dx_t)_g

(`a_{t,g}`: the group's activations at token `t`, `(dL/dx_t)_g`: the loss gradient at the reader's input, on the same
columns), and the Fisher estimate of the loss increase from removing the group is `mean_i s_{i,g}^2` (Kwon et al.,
"A Fast Post-Training Pruning Framework for Transformers", 2022). The `"fisher"` saliency squares the same gradient
summed over a whole batch, where per-sequence gradients of a trained model largely cancel; `"output"` drops the
alignment between the group's output and the gradient. Both factors here come from a forward hook (the input) and a
gradient hook on the reader's input, one elementwise product per reader and step, no host sync.

A KV group scores as its query heads, summed; groups without an `nn.Linear` or `Conv1D` reader are refused (see
`readers.unread_groups`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .readers import check_every_group_is_read, nest_positions, reader_columns
from .sharding import sum_over_ranks

if TYPE_CHECKING:
    from oto_hf.graph.groups import ZeroInvariantGroup


class SampleFisher:
    """Hooks on the readers of `groups` in `model` that accumulate `sum_i s_{i,g}^2` and the number of sequences.

    Args:
        model (`nn.Module`): the model the groups were discovered on.
        groups (`Sequence[ZeroInvariantGroup]`): the groups, in the optimizer's order.
    """

    def __init__(self, model: nn.Module, groups: Sequence[ZeroInvariantGroup]) -> None:
        check_every_group_is_read(model, groups, "sample_fisher")
        readers = reader_columns(model, groups)
        # per reader: [(group positions (n,), input columns (n, width))], one block per width
        self._blocks = {owner: blocks for owner, (_, _, blocks) in readers.items()}
        self.num_groups = len(groups)
        self._nests = nest_positions(groups)
        self._sums: torch.Tensor | None = None  # (num_groups,) sum over sequences of s^2, float64, model's device
        self.samples = 0  # sequences seen, counted at one reader (every reader sees each forward's sequences)
        self._counter = next(iter(self._blocks), None)
        self.active = False
        self._handles: list[RemovableHandle] = [
            module.register_forward_hook(self._record(owner)) for owner, (module, _, _) in readers.items()
        ]

    def _record(self, owner: str) -> Any:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not (self.active and module.training and torch.is_grad_enabled() and args):
                return
            x = args[0]
            if not (isinstance(x, torch.Tensor) and x.requires_grad):
                return
            activations = x.detach()
            if owner == self._counter:
                self.samples += activations.shape[0] if activations.dim() > 2 else 1
            x.register_hook(self._record_gradient(owner, activations))

        return hook

    def _record_gradient(self, owner: str, activations: torch.Tensor) -> Any:
        def hook(grad: torch.Tensor) -> None:
            product = (activations * grad.detach()).double()
            product = product.reshape(-1 if product.dim() > 2 else 1, *product.shape[-2:])  # (sequences, tokens, in)
            if self._sums is None:
                self._sums = torch.zeros(self.num_groups, dtype=torch.float64, device=product.device)
            for positions, columns in self._blocks[owner]:
                columns = columns.to(product.device)
                per_sequence = product[:, :, columns].sum((1, 3))  # (sequences, n): the mask gradient s_{i,g}
                self._sums.index_add_(0, positions.to(product.device), per_sequence.square().sum(0))

        return hook

    @torch.no_grad()
    def importance(self) -> torch.Tensor:
        """`mean_i s_{i,g}^2` over the sequences recorded since the last `reset` (every rank's under
        `torch.distributed`, so every rank must call it), float64 on the CPU."""
        sums = self._sums if self._sums is not None else torch.zeros(self.num_groups, dtype=torch.float64)
        samples = torch.tensor([float(self.samples)], dtype=torch.float64, device=sums.device)
        packed = sum_over_ranks(torch.cat([sums, samples])).cpu()  # at a partition, never per step
        result = packed[:-1] / max(float(packed[-1]), 1.0)
        for parent, children in self._nests:
            result[parent] += result[children].sum()
        return result

    def reset(self) -> None:
        """Forget what was recorded (at each partition)."""
        self._sums, self.samples = None, 0

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def state_dict(self) -> dict[str, Any]:
        """What was recorded, for checkpoints."""
        return {"sums": self._sums, "samples": self.samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums, self.samples = state["sums"], int(state["samples"])
