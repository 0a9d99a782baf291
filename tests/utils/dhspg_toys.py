"""Hand-built toy models and their groups for the DHSPG tests, with a training step and a no-host-sync guard."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from oto_hf.graph.groups import GroupSet, TensorSlice, ZeroInvariantGroup
from oto_hf.optim import DHSPG
from oto_hf.optim.base_steps import state_tensors

HIDDEN, HEADS, FFN, LAYERS = 8, 2, 12, 2
NUM_GROUPS = LAYERS * (HEADS + FFN)
# Per-group costs of `TinyModel`'s groups (per layer: 2 heads, then 12 neurons) for FLOPs-budget tests.
FLOP_COSTS = [30.0] * 2 + [2.0] * 12 + [30.0] * 2 + [2.0] * 12


class TinyBlock(nn.Module):
    """Attention (2 heads of 4) and an FFN of 12 neurons: heads span q/k/v rows and o columns."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(HIDDEN, HIDDEN) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
        self.up, self.down = nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, HEADS, -1).transpose(1, 2)

        attention = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        x = self.norm1(x + self.o(attention.transpose(1, 2).reshape(b, t, HIDDEN)))
        return self.norm2(x + self.down(F.gelu(self.up(x))))


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, HIDDEN)
        self.blocks = nn.ModuleList(TinyBlock() for _ in range(LAYERS))
        self.head = nn.Linear(HIDDEN, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


class ChainMLP(nn.Module):
    """fc2's rows belong to layer-2 neurons and its columns to layer-1 neurons: overlapping axes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(5, 10), nn.Linear(10, 10), nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.mean(1))))))


def _group_set(model: nn.Module, specs: list[tuple[str, int, list[tuple[str, int, torch.Tensor]]]]) -> GroupSet:
    params = dict(model.named_parameters())
    groups = []
    for kind, layer, slices in specs:
        slices = [TensorSlice(name, dim, idx) for name, dim, idx in slices]
        num_params = sum(params[s.name].numel() // params[s.name].shape[s.dim] * len(s.indices) for s in slices)
        groups.append(ZeroInvariantGroup(len(groups), kind, layer, f"layer{layer}", slices, num_params=num_params))
    return GroupSet(groups)


def tiny_groups(model: TinyModel) -> GroupSet:
    specs = []
    size = HIDDEN // HEADS
    for layer in range(LAYERS):
        p = f"blocks.{layer}."
        for h in range(HEADS):
            idx = torch.arange(h * size, (h + 1) * size)
            slices = [(f"{p}{m}.{w}", 0, idx) for m in "qkv" for w in ("weight", "bias")] + [(p + "o.weight", 1, idx)]
            specs.append(("head", layer, slices))
        for i in range(FFN):
            idx = torch.tensor([i])
            specs.append(
                ("neuron", layer, [(p + "up.weight", 0, idx), (p + "up.bias", 0, idx), (p + "down.weight", 1, idx)])
            )
    return _group_set(model, specs)


def chain_groups(model: ChainMLP) -> GroupSet:
    specs = []
    for layer, (producer, consumer) in enumerate([("fc1", "fc2"), ("fc2", "fc3")]):
        for i in range(10):
            idx = torch.tensor([i])
            slices = [(f"{producer}.weight", 0, idx), (f"{producer}.bias", 0, idx), (f"{consumer}.weight", 1, idx)]
            specs.append(("neuron", layer, slices))
    return _group_set(model, specs)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(16, 4, 5, generator=generator)
    return x, torch.stack([x[..., 0].mean(1), x[..., 1].amax(1), x[..., 2].sum(1)], 1)


def trainer_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay and no-decay groups as `transformers.Trainer` builds them."""
    named = list(model.named_parameters())
    no_decay = [p for n, p in named if n.endswith("bias") or "norm" in n]
    decay = [p for n, p in named if not (n.endswith("bias") or "norm" in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make(
    model_cls=TinyModel, seed: int = 0, weight_decay: float = 0.01, **kwargs
) -> tuple[nn.Module, GroupSet, DHSPG]:
    torch.manual_seed(seed)
    model = model_cls()
    groups = tiny_groups(model) if model_cls is TinyModel else chain_groups(model)
    kwargs = {"lr": 0.05, "variant": "sgd", "partition_steps": 5, "pruning_end_steps": 25, **kwargs}
    optimizer = DHSPG(
        trainer_param_groups(model, weight_decay),
        groups,
        model.named_parameters(),
        weight_decay=weight_decay,
        **kwargs,
    )
    return model, groups, optimizer


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    x, y = batch(step)
    optimizer.zero_grad()
    F.mse_loss(model(x), y).backward()
    optimizer.step()


def train_without_host_sync(model: nn.Module, optimizer: DHSPG, steps: int, monkeypatch) -> None:
    """`steps` training steps, none of which may read a value back to the host, except the partition and deadline
    steps (the rare events that choose groups)."""
    events = {*optimizer.partition_points, optimizer.pruning_end_steps - 1}
    for step in range(steps):
        if step in events:
            train_step(model, optimizer, step)
            continue
        with forbid_host_sync(monkeypatch):
            train_step(model, optimizer, step)


def group_state_is_zero(model: nn.Module, groups: GroupSet, optimizer: DHSPG, group_ids: list[int]) -> bool:
    params = dict(model.named_parameters())
    for group_id in group_ids:
        for name, dim, idx in groups[group_id].slices:
            param = params[name]
            for tensor in [param, *state_tensors(optimizer.state[param])]:
                if tensor.index_select(dim, idx).any():
                    return False
    return True


@contextmanager
def forbid_host_sync(monkeypatch):
    """Fail on any tensor-to-Python conversion (a host synchronisation on GPU) inside the block."""

    def fail(*args, **kwargs):
        raise AssertionError("host synchronisation in a normal step")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "nonzero", "__float__", "__int__"):
            patch.setattr(torch.Tensor, name, fail)
        yield
