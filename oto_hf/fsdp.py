"""Models sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`): gather an unsharded copy to slice and save.

Discovery and slicing work on whole tensors. Under FSDP2 (`accelerate` with `fsdp_version: 2`, or `fully_shard` by
hand) each rank holds dim-0 shards, so the trained model is gathered once on the first rank, as one process would
hold it, before `construct_subnet` and `save_pruned`.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of `model` is a `DTensor` (FSDP2 or another `torch.distributed.tensor` layout)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def gather_full_model(model: nn.Module) -> nn.Module | None:
    """An unsharded copy of a sharded `model` on the first rank (`None` on the others); `model` itself otherwise.

    Every rank must call it (it all-gathers the parameters). The copy is a new instance of the model's own class built
    from its config, holding the full state dict on the CPU.
    """
    if not is_sharded(model):
        return model
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"Gathering a sharded {type(model).__name__} needs a transformers `PreTrainedModel` (a config to rebuild "
            "it from); gather the full state dict yourself and load it into an unsharded copy."
        )
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    # fully_shard swaps the class for a subclass of (FSDPModule, original class).
    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    full = cls._from_config(model.config)
    full.load_state_dict(state)
    return full.train(model.training)
