"""The base optimizer steps DHSPG builds on: SGD with momentum, Adam and AdamW.

`update` applies the plain step in place to a list of parameters, in the same order of operations as
`torch.optim.SGD`, `torch.optim.Adam` and `torch.optim.AdamW` (their per-tensor code paths, or with `foreach=True`
their `_foreach_*` ones).
`directions` advances the optimizer state in the same way but returns the update direction `d` of each parameter (the
step is `param -= lr * (d + decay * param)`) for DHSPG to modify per group. Parameters, gradients and state may be
FSDP2 `DTensor`s: the arithmetic runs on their local shards (see `sharding`). Per-parameter step counts are Python
ints, so no step reads a tensor back to the host.

The `torch._foreach_*` ops are the ones `torch.optim` itself uses for `foreach=True` (checked against torch 2.13;
`tests/test_dhspg.py` compares both paths with `torch.optim` step for step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .sharding import local

VARIANTS: tuple[str, ...] = ("sgd", "adam", "adamw")


def state_tensors(state: dict[str, Any]) -> list[torch.Tensor]:
    """The per-element state tensors (moments, momentum buffer) of one parameter, as local shards."""
    return [local(state[key]) for key in ("exp_avg", "exp_avg_sq", "momentum_buffer") if state.get(key) is not None]


def check_hyperparameters(group: dict[str, Any], index: int) -> None:
    """Raise a `ValueError` naming the value and the allowed range for a bad hyperparameter of group `index`."""
    where = f" (parameter group {index})"
    lr = group["lr"]
    if isinstance(lr, torch.Tensor):
        raise ValueError(f"`lr` must be a Python float{where}, got a tensor.")
    if not lr >= 0:
        raise ValueError(f"`lr` must be >= 0{where}, got {lr!r}.")
    if not group["eps"] >= 0:
        raise ValueError(f"`eps` must be >= 0{where}, got {group['eps']!r}.")
    if not group["weight_decay"] >= 0:
        raise ValueError(f"`weight_decay` must be >= 0{where}, got {group['weight_decay']!r}.")
    betas = group["betas"]
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"`betas` must be two numbers in [0, 1){where}, got {betas!r}.")
    if not group["momentum"] >= 0:
        raise ValueError(f"`momentum` must be >= 0{where}, got {group['momentum']!r}.")
    if not 0 <= group["dampening"] <= 1:
        raise ValueError(f"`dampening` must be in [0, 1]{where}, got {group['dampening']!r}.")
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError(f"`nesterov=True` needs `momentum > 0` and `dampening == 0`{where}.")


def can_hold_directions(params: list[torch.Tensor], grads: list[torch.Tensor]) -> bool:
    """Whether every gradient's storage can take its parameter's direction (`directions(..., consume_grads=True)`)."""
    return all(g.is_contiguous() and g.shape == p.shape and g.dtype == p.dtype for p, g in zip(params, grads))


def init_state(variant: str, param: torch.Tensor, state: dict[str, Any]) -> None:
    """Create the state of `param` (zeros shaped and sharded like it) unless it exists."""
    if state:
        return
    if variant == "sgd":
        state["momentum_buffer"] = None  # set to the first gradient, as torch.optim.SGD does
        return
    state["step"] = 0
    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)


def update(
    variant: str,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict[str, Any]],
    group: dict[str, Any],
    foreach: bool,
    scratch: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Apply the plain base step of `variant` to every parameter (local tensors; states from `init_state`).

    `scratch(t)`, if given, returns a reusable tensor shaped like `t` for the Adam denominators (per-tensor path), so
    the step allocates nothing of the parameters' size; the arithmetic is unchanged.
    """
    if not params:
        return
    lr = group["lr"]
    if variant == "sgd":
        steps = _sgd_directions(params, grads, states, group, foreach)
        if foreach:
            torch._foreach_add_(params, steps, alpha=-lr)
        else:
            for param, step in zip(params, steps):
                param.add_(step, alpha=-lr)
        return
    if variant == "adamw" and group["weight_decay"] != 0:
        if foreach:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        else:
            for param in params:
                param.mul_(1 - lr * group["weight_decay"])
    exp_avgs, exp_avg_sqs, corrections1, corrections2_sqrt = _adam_moments(
        params, grads, states, group, variant == "adam", foreach
    )
    eps = group["eps"]
    if foreach:
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, corrections2_sqrt)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denoms, [-(lr / c) for c in corrections1])
        return
    for param, exp_avg, exp_avg_sq, c1, c2 in zip(params, exp_avgs, exp_avg_sqs, corrections1, corrections2_sqrt):
        denom = exp_avg_sq.sqrt() if scratch is None else torch.sqrt(exp_avg_sq, out=scratch(exp_avg_sq))
        param.addcdiv_(exp_avg, denom.div_(c2).add_(eps), value=-(lr / c1))


def directions(
    variant: str,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict[str, Any]],
    group: dict[str, Any],
    foreach: bool,
    consume_grads: bool = False,
) -> tuple[list[torch.Tensor], float]:
    """Advance the state of every parameter and return `(directions, decay)`, without touching the parameters: the
    base step is `param -= lr * (d + decay * param)`.

    `decay` is AdamW's decoupled weight decay (0 for the other variants, whose L2 term is inside the state); keeping it
    apart lets DHSPG fold it into per-group reductions and the final update instead of a full pass over `d`. With
    `consume_grads`, each direction is written into its gradient's storage (read first), so the step allocates nothing
    of the parameters' size: the gradients must be contiguous tensors shaped and typed like their parameters.
    """
    if not params:
        return [], 0.0
    if variant == "sgd":
        return _sgd_directions(params, grads, states, group, foreach, in_place=consume_grads), 0.0
    exp_avgs, exp_avg_sqs, corrections1, corrections2_sqrt = _adam_moments(
        params, grads, states, group, variant == "adam", foreach
    )
    decay = group["weight_decay"] if variant == "adamw" else 0.0
    eps = group["eps"]
    # d = m_hat / (sqrt(v_hat) + eps) = exp_avg / (sqrt(exp_avg_sq) * bc1 / bc2_sqrt + eps * bc1).
    scales = [c1 / c2 for c1, c2 in zip(corrections1, corrections2_sqrt)]
    offsets = [eps * c1 for c1 in corrections1]
    if foreach:
        if not consume_grads:
            denoms = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_mul_(denoms, scales)
            torch._foreach_add_(denoms, offsets)
            return torch._foreach_div(exp_avgs, denoms), decay
        torch._foreach_copy_(grads, exp_avg_sqs)
        torch._foreach_sqrt_(grads)
        torch._foreach_mul_(grads, scales)
        torch._foreach_add_(grads, offsets)
        torch._foreach_reciprocal_(grads)
        torch._foreach_mul_(grads, exp_avgs)
        return grads, decay
    out = []
    for exp_avg, exp_avg_sq, grad, scale, offset in zip(exp_avgs, exp_avg_sqs, grads, scales, offsets):
        denom = torch.sqrt(exp_avg_sq, out=grad) if consume_grads else exp_avg_sq.sqrt()
        denom.mul_(scale).add_(offset)
        out.append(torch.div(exp_avg, denom, out=denom))
    return out, decay


def _sgd_directions(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict[str, Any]],
    group: dict[str, Any],
    foreach: bool,
    in_place: bool = False,
) -> list[torch.Tensor]:
    """SGD's step directions (momentum buffers advanced); with `in_place`, the gradients hold the intermediate sums."""
    weight_decay, momentum = group["weight_decay"], group["momentum"]
    if weight_decay != 0 and in_place:
        if foreach:
            torch._foreach_add_(grads, params, alpha=weight_decay)
        else:
            for grad, param in zip(grads, params):
                grad.add_(param, alpha=weight_decay)
    elif weight_decay != 0:
        grads = (
            torch._foreach_add(grads, params, alpha=weight_decay)
            if foreach
            else [g.add(p, alpha=weight_decay) for g, p in zip(grads, params)]
        )
    if momentum == 0:
        return list(grads)
    out = []
    for grad, state in zip(grads, states):
        buffer = state.get("momentum_buffer")
        if buffer is None:
            state["momentum_buffer"] = grad.detach().clone()
            buffer = state["momentum_buffer"]
        else:
            buffer = local(buffer)
            buffer.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
        if group["nesterov"]:
            out.append(grad.add_(buffer, alpha=momentum) if in_place else grad.add(buffer, alpha=momentum))
        else:
            out.append(buffer)
    return out


def _adam_moments(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict[str, Any]],
    group: dict[str, Any],
    l2: bool,
    foreach: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float], list[float]]:
    """Update the moments; return them with the bias corrections `1 - beta1**t` and `sqrt(1 - beta2**t)`."""
    beta1, beta2 = group["betas"]
    weight_decay = group["weight_decay"]
    exp_avgs = [local(state["exp_avg"]) for state in states]
    exp_avg_sqs = [local(state["exp_avg_sq"]) for state in states]
    for state in states:
        state["step"] += 1
    if foreach:
        if l2 and weight_decay != 0:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    else:
        for param, grad, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs):
            if l2 and weight_decay != 0:
                grad = grad.add(param, alpha=weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    steps = [state["step"] for state in states]
    return exp_avgs, exp_avg_sqs, [1 - beta1**t for t in steps], [(1 - beta2**t) ** 0.5 for t in steps]
