"""The per-group statistics of a DHSPG step, from one dense reduction per axis and one segmented sum."""

from __future__ import annotations

import torch

from .packed_index import GroupIndex

# Per-group statistics of every pruning step: squared norms of x and d and <x, d>, and the last two with each
# parameter's learning rate folded in.
STEP_KEYS: tuple[str, ...] = ("xx", "xd", "dd", "axx", "axd")


def pruning_statistics(
    index: GroupIndex,
    params: list[torch.Tensor],
    grads: list[torch.Tensor | None],
    directions: list[torch.Tensor | None],
    decays: list[float],
    lrs: list[float],
    with_importance: bool,
    with_l1: bool,
) -> dict[str, torch.Tensor]:
    """Per-group statistics of one pruning step, over the local tensors of `index.params` (same order).

    `d + decay * x` is the step direction of a parameter; its statistics come from those of `d` without materialising
    it. Besides `STEP_KEYS`, `"xg"` (`<x, grad>`) is computed `with_importance` and `"l1"` (`sum |x|`) `with_l1`.
    """
    keys = [*STEP_KEYS, *(["xg"] if with_importance else []), *(["l1"] if with_l1 else [])]
    rows = []
    for x, grad, d, decay, lr, axes in zip(params, grads, directions, decays, lrs, index.axes, strict=True):
        for axis in axes:
            xx = axis.squared_norms(x)
            if d is None:
                xd = dd = torch.zeros_like(xx)
            else:
                xd, dd = axis.inner_products(x, d), axis.squared_norms(d)
            if decay:
                dd = (dd + 2 * decay * xd + decay**2 * xx).clamp_min_(0)
                xd = xd + decay * xx
            block = [xx, xd, dd, xx * lr, xd * lr]
            if with_importance:
                block.append(torch.zeros_like(xx) if grad is None else axis.inner_products(x, grad))
            if with_l1:
                block.append(axis.sum_over_others(x.abs()))
            rows.append(torch.stack(block))
    return dict(zip(keys, index.segment_sums(rows), strict=True))


def importance_statistics(
    index: GroupIndex, params: list[torch.Tensor], grads: list[torch.Tensor | None]
) -> torch.Tensor:
    """Per group, `<x_g, grad_g>` (the gradient of a mask on the group), over the local tensors of `index.params`."""
    rows = [
        (torch.zeros(axis.view_shape[axis.dim], device=x.device) if grad is None else axis.inner_products(x, grad))[
            None
        ]
        for x, grad, axes in zip(params, grads, index.axes, strict=True)
        for axis in axes
    ]
    return index.segment_sums(rows)[0]
