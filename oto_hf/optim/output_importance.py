"""DHSPG's `saliency="kfac"` and `"output"`: a group's importance from what it writes and how much the loss cares.

A group reaches the rest of the network through the layer that reads it (its *reader*: the linear layer whose input
columns it owns, e.g. `o_proj` for a head, `down_proj` for a neuron). Removing the group takes `delta_t = W_g a_{t,g}`
away from that layer's output `y_t` (`a_{t,g}`: the group's activations at token `t`, `W_g`: the reader's columns).
The loss increase is about `E[(delta_t . dL/dy_t)^2]` (the Fisher, second-order term). Taking the gradient as
independent of the activations (the Kronecker-factored Fisher of K-FAC, Martens & Grosse 2015) gives

    kfac:    importance_g = tr(W_g^T G W_g M_g),   G = E_t dL/dy_t dL/dy_t^T,   M_g = E_t a_{t,g} a_{t,g}^T

that is `E_{t,s} (dL/dy_s . delta_t)^2` over every pair of tokens; taking the gradient as isotropic too
(`G = tr(G) / dim(y) I`) gives

    output:  importance_g = E_t ||delta_t||^2 * E_t ||dL/dy_t||^2 / dim(y)

summed over the group's readers. `"kfac"` keeps the directions the loss is sensitive to (where a LayerNorm follows the
reader, as in BERT, the gradient has none along what the norm removes) and costs one `dim(y) x dim(y)` float32 matrix
per reader; `"output"` is the default (README, Quality: it ranks better on SmolLM2 once trained, and on MiniLM the two
are within noise). Both average over every token, where `"fisher"` squares one mean gradient per step. `M_g` is
accumulated by forward hooks (one `k x k` block per group of `k` columns), `G` (or, for `"output"`, its trace) by a
hook on the reader's output gradient. Only training forwards (grad enabled, module in training mode) count, and only
while `active`.

A KV group (grouped-query attention) has no reader of its own: removing it removes its query heads, so its importance
is theirs, summed. Any other group without an `nn.Linear` or `Conv1D` reader (`readers.unread_groups`) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.hooks import RemovableHandle

from .readers import check_every_group_is_read, nest_positions, reader_columns
from .sharding import sum_over_ranks

if TYPE_CHECKING:
    from oto_hf.graph.groups import ZeroInvariantGroup


@dataclass
class _Block:
    """The groups of one reader that own `width` input columns each."""

    positions: torch.Tensor  # (n,) group positions
    columns: torch.Tensor  # (n, width) input columns of the reader
    moments: torch.Tensor | None = None  # (n, width, width) sum over tokens of a_g a_g^T, float64


@dataclass
class _Reader:
    module: nn.Module
    transposed: bool  # Conv1D keeps its weight as (in, out)
    blocks: list[_Block]
    tokens: int = 0
    grad_tokens: int = 0
    # sum over tokens of dL/dy_t dL/dy_t^T, (out, out) float32; with `isotropic`, its trace only, (1, 1) float64
    grad_moments: torch.Tensor | None = None


class OutputImportance:
    """Forward and gradient hooks on the readers of `groups` in `model` that estimate each group's importance.

    Args:
        model (`nn.Module`): the model the groups were discovered on.
        groups (`Sequence[ZeroInvariantGroup]`): the groups, in the optimizer's order.
        isotropic (`bool`, *optional*, defaults to `True`): score as `"output"` (the gradient taken as isotropic);
            `False` scores as `"kfac"` (its second moment per reader).

    Example:
    ```python
    >>> source = OutputImportance(model, groups)
    >>> optimizer = DHSPG.from_model(model, groups, saliency="output", importance_source=source, ...)
    ```
    """

    def __init__(self, model: nn.Module, groups: Sequence[ZeroInvariantGroup], isotropic: bool = True) -> None:
        check_every_group_is_read(model, groups, "output" if isotropic else "kfac")
        self.isotropic = isotropic
        self.num_groups = len(groups)
        self._readers = {
            owner: _Reader(module, transposed, [_Block(positions, columns) for positions, columns in blocks])
            for owner, (module, transposed, blocks) in reader_columns(model, groups).items()
        }
        self._nests = nest_positions(groups)
        self.active = False
        self._handles: list[RemovableHandle] = [
            reader.module.register_forward_hook(self._record(reader)) for reader in self._readers.values()
        ]

    def _record(self, reader: _Reader) -> Any:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not (self.active and module.training and torch.is_grad_enabled() and args):
                return
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            for block in reader.blocks:
                block.columns = block.columns.to(x.device)
                a = x[:, block.columns]  # (tokens, n, width)
                moments = torch.einsum("tnk,tnl->nkl", a, a)
                block.moments = moments if block.moments is None else block.moments + moments
            reader.tokens += x.shape[0]
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(self._record_gradient(reader))

        return hook

    def _record_gradient(self, reader: _Reader) -> Any:
        def hook(grad: torch.Tensor) -> None:
            flat = grad.detach().reshape(-1, grad.shape[-1])
            if self.isotropic:
                moments = flat.double().square().sum().view(1, 1)
            else:
                flat = flat.float()
                moments = flat.T @ flat
            reader.grad_moments = moments if reader.grad_moments is None else reader.grad_moments + moments
            reader.grad_tokens += grad[..., 0].numel()

        return hook

    @torch.no_grad()
    def importance(self) -> torch.Tensor:
        """Each group's importance from what was recorded since the last `reset` (zero where nothing was), float64 on
        the CPU. Under `torch.distributed` it counts every rank's tokens, so every rank must call it."""
        result = torch.zeros(self.num_groups, dtype=torch.float64)
        for reader, (tokens, grad_tokens), grad_moments, moments in self._recorded():
            if not tokens or not grad_tokens:
                continue
            weight = reader.module.weight.detach()
            # FSDP2 shards rows; every rank scores at the same steps, so gathering the full weight is safe
            weight = (weight.full_tensor() if isinstance(weight, DTensor) else weight).double().cpu()
            weight = weight.t() if reader.transposed else weight  # (out, in)
            sensitivity = grad_moments / grad_tokens
            for block, block_moments in zip(reader.blocks, moments, strict=True):
                block_weight = weight[:, block.columns.cpu()]  # (out, n, width)
                if self.isotropic:
                    sensed = block_weight * (sensitivity[0, 0] / len(weight))
                else:
                    sensed = (sensitivity @ block_weight.flatten(1)).view_as(block_weight)
                gram = torch.einsum("onk,onl->nkl", block_weight, sensed)
                energy = (gram * block_moments).sum((1, 2)) / tokens
                result.index_add_(0, block.positions, energy)
        for parent, children in self._nests:
            result[parent] += result[children].sum()
        return result

    def _recorded(self) -> list[tuple[_Reader, tuple[float, float], torch.Tensor, list[torch.Tensor]]]:
        """Per reader: (tokens, gradient tokens), the gradient's moments and each block's moments on the CPU, summed
        over the ranks under `torch.distributed` (data parallel: each rank records its own share of the batch), so that
        every rank scores the groups on the whole batch, as one process would."""
        packed = []
        for reader in self._readers.values():
            packed.append(torch.tensor([reader.tokens, reader.grad_tokens], dtype=torch.float64))
            width = self._gradient_width(reader)
            grad_moments = reader.grad_moments if reader.grad_moments is not None else torch.zeros(width, width)
            packed.append(grad_moments.detach().double().cpu().flatten())
            for block in reader.blocks:
                n, width = block.columns.shape
                moments = block.moments if block.moments is not None else torch.zeros(n, width, width)
                packed.append(moments.detach().double().cpu().flatten())
        flat = torch.cat(packed) if packed else torch.zeros(0, dtype=torch.float64)
        if self._readers:  # on the weights' device (NCCL reduces CUDA tensors); at a partition, never per step
            flat = sum_over_ranks(flat.to(next(iter(self._readers.values())).module.weight.device)).cpu()
        recorded, offset = [], 0
        for reader in self._readers.values():
            counts = tuple(flat[offset : offset + 2].tolist())
            offset += 2
            width = self._gradient_width(reader)
            grad_moments = flat[offset : offset + width * width].view(width, width)
            offset += width * width
            moments = []
            for block in reader.blocks:
                n, width = block.columns.shape
                moments.append(flat[offset : offset + n * width * width].view(n, width, width))
                offset += n * width * width
            recorded.append((reader, counts, grad_moments, moments))
        return recorded

    def _gradient_width(self, reader: _Reader) -> int:
        """The side of the gradient's recorded moments: 1 (the trace) with `isotropic`, else the reader's output width
        (its weight is `(in, out)` for `Conv1D`, `(out, in)` for `nn.Linear`)."""
        return 1 if self.isotropic else reader.module.weight.shape[1 if reader.transposed else 0]

    def reset(self) -> None:
        """Forget what was recorded (at each partition)."""
        for reader in self._readers.values():
            reader.tokens = reader.grad_tokens = 0
            reader.grad_moments = None
            for block in reader.blocks:
                block.moments = None

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def state_dict(self) -> dict[str, Any]:
        """What was recorded, as plain types and tensors, for checkpoints."""
        return {
            name: {
                "tokens": reader.tokens,
                "grad_tokens": reader.grad_tokens,
                "grad_moments": reader.grad_moments,
                "moments": [block.moments for block in reader.blocks],
            }
            for name, reader in self._readers.items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, entry in state.items():
            reader = self._readers[name]
            reader.tokens, reader.grad_tokens = int(entry["tokens"]), int(entry["grad_tokens"])
            reader.grad_moments = entry["grad_moments"]
            for block, moments in zip(reader.blocks, entry["moments"], strict=True):
                block.moments = moments
