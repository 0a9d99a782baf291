"""The base optimizer steps DHSPG builds on: SGD with momentum, Adam and AdamW.

`*_update` functions apply the plain step in place, in the same order of operations as the single-tensor code paths of
`torch.optim.SGD`, `torch.optim.Adam` and `torch.optim.AdamW`. `*_direction` functions advance the optimizer state in
the same way but return the update direction `d` (the step is `param -= lr * d`) for DHSPG to modify per group.
Per-parameter step counts are Python ints, so no step reads a tensor back to the host.
"""

from __future__ import annotations

from typing import Any

import torch

VARIANTS: tuple[str, ...] = ("sgd", "adam", "adamw")


def state_tensors(state: dict[str, Any]) -> list[torch.Tensor]:
    """The per-element state tensors (moments, momentum buffer) of one parameter."""
    return [state[key] for key in ("exp_avg", "exp_avg_sq", "momentum_buffer") if key in state]


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


def update(
    variant: str, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
) -> None:
    """Apply the plain base step of `variant` to `param`."""
    lr = group["lr"]
    if variant == "sgd":
        param.add_(_sgd_advance(param, grad, state, group), alpha=-lr)
        return
    if variant == "adamw" and group["weight_decay"] != 0:
        param.mul_(1 - lr * group["weight_decay"])
    exp_avg, exp_avg_sq, bias_correction1, bias_correction2_sqrt = _adam_moments(
        param, grad, state, group, l2=variant == "adam"
    )
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
    param.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))


def direction(
    variant: str, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
) -> tuple[torch.Tensor, float]:
    """Advance the state of `param` and return `(d, decay)`, without touching `param`: the base step is
    `param -= lr * (d + decay * param)`.

    `decay` is AdamW's decoupled weight decay (0 for the other variants, whose L2 term is inside the state); keeping it
    apart lets DHSPG fold it into per-group reductions and the final update instead of a full pass over `d`.
    """
    if variant == "sgd":
        return _sgd_advance(param, grad, state, group), 0.0
    exp_avg, exp_avg_sq, bias_correction1, bias_correction2_sqrt = _adam_moments(
        param, grad, state, group, l2=variant == "adam"
    )
    # d = m_hat / (sqrt(v_hat) + eps) = exp_avg / (sqrt(exp_avg_sq) * bc1 / bc2_sqrt + eps * bc1), built in place.
    denom = exp_avg_sq.sqrt().mul_(bias_correction1 / bias_correction2_sqrt).add_(group["eps"] * bias_correction1)
    return torch.div(exp_avg, denom, out=denom), group["weight_decay"] if variant == "adamw" else 0.0


def _sgd_advance(
    param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
) -> torch.Tensor:
    if group["weight_decay"] != 0:
        grad = grad.add(param, alpha=group["weight_decay"])
    momentum = group["momentum"]
    if momentum == 0:
        return grad
    buffer = state.get("momentum_buffer")
    if buffer is None:
        buffer = state["momentum_buffer"] = grad.detach().clone()
    else:
        buffer.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
    return grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer


def _adam_moments(
    param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any], l2: bool
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Update the moments; return them with the bias corrections `1 - beta1**t` and `sqrt(1 - beta2**t)`."""
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    state["step"] += 1
    beta1, beta2 = group["betas"]
    if l2 and group["weight_decay"] != 0:
        grad = grad.add(param, alpha=group["weight_decay"])
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step = state["step"]
    return exp_avg, exp_avg_sq, 1 - beta1**step, (1 - beta2**step) ** 0.5
