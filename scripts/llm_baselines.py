"""One-shot pruning baselines for decoder LLMs, against which `bench_llm.py` measures OTO.

- `width_prune` (Minitron-style width pruning): attention heads and FFN neurons ranked by their activations over
  calibration batches (a head by the norm of its output before the output projection, a neuron by the mean magnitude
  of its input to the down projection, `act(gate) * up` in a gated FFN); the least important are removed, the same
  number in every layer, so that the decoder layers' FLOPs fall to the target. Which mix of heads and neurons meets
  the target is chosen, as Minitron's candidate search does, by the loss on the calibration batches. The groups come
  from oto_hf's `discover_groups` and the smaller model from `construct_subnet` (exact slicing).
- `depth_prune` (ShortGPT-style depth pruning): each decoder block's influence, one minus the cosine similarity of
  its input and output hidden states averaged over the calibration tokens; the least influential blocks are removed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.utils import logging as hf_logging

from oto_hf import GroupSet, ZeroInvariantGroup, construct_subnet
from oto_hf.stats import count_flops

Batches = Sequence[dict[str, torch.Tensor]]


# ---- depth ---------------------------------------------------------------------------------------------------------


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The path and `ModuleList` of the decoder blocks: the list with `config.num_hidden_layers` entries."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise ValueError(
        f"No list of {count} decoder blocks (config.num_hidden_layers) found in {type(model).__name__}; depth pruning "
        "needs a transformers decoder model whose blocks sit in one nn.ModuleList."
    )


@torch.no_grad()
def block_influence(model: nn.Module, batches: Batches) -> list[float]:
    """ShortGPT's block influence of each decoder block: `1 - cos(input, output)` of its hidden states, averaged over
    every token of `batches`. A block that leaves its input as it is scores 0."""
    _, layers = decoder_layers(model)
    totals = [0.0] * len(layers)
    counts = [0] * len(layers)

    def hook(index: int) -> Callable:
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, tuple) else output
            cosine = nn.functional.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)
            totals[index] += float((1 - cosine).sum())
            counts[index] += cosine.numel()

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        _run(model, batches, "Block influence")
    finally:
        for handle in handles:
            handle.remove()
    return [total / count for total, count in zip(totals, counts)]


def drop_blocks(model: nn.Module, remove: Sequence[int]) -> nn.Module:
    """A copy of `model` without the decoder blocks at `remove`; the blocks left are renumbered (their `layer_idx`,
    which places them in the KV cache) and the config follows (`num_hidden_layers`, and `layer_types` if it has it)."""
    _, layers = decoder_layers(model)
    remove = sorted(set(remove))
    if not remove or remove[0] < 0 or remove[-1] >= len(layers) or len(remove) >= len(layers):
        raise ValueError(f"Blocks to remove must be some, not all, of 0..{len(layers) - 1}; got {remove}.")
    result = copy.deepcopy(model)
    path, layers = decoder_layers(result)
    kept = [block for index, block in enumerate(layers) if index not in remove]
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    parent, _, leaf = path.rpartition(".")
    setattr(result.get_submodule(parent), leaf, nn.ModuleList(kept))
    config = result.config
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [kind for index, kind in enumerate(config.layer_types) if index not in remove]
    config.num_hidden_layers = len(kept)
    return result


@dataclass
class DepthResult:
    model: nn.Module
    influence: list[float]
    removed: list[int]


def depth_prune(model: nn.Module, batches: Batches, num_remove: int) -> DepthResult:
    """ShortGPT: remove the `num_remove` decoder blocks of least influence on `batches`."""
    influence = block_influence(model, batches)
    removed = sorted(sorted(range(len(influence)), key=influence.__getitem__)[:num_remove])
    return DepthResult(drop_blocks(model, removed), influence, removed)


# ---- width ---------------------------------------------------------------------------------------------------------


@dataclass
class WidthResult:
    model: nn.Module
    removed_per_layer: dict[str, int]  # units removed in every layer: "attention" (KV groups, or heads), "neuron"
    kept_per_layer: dict[str, int]
    removed_ids: list[int]
    candidates: list[dict[str, Any]] = field(default_factory=list)  # each mix tried: units removed, loss


def width_units(groups: GroupSet) -> dict[str, list[list[list[ZeroInvariantGroup]]]]:
    """The units the width baseline removes, per decoder layer (in layer order), as lists of groups:

    - `"attention"`: with grouped-query attention, a KV group with every query head nested in it (the groups that
      share its `nest`), so that every KV group left keeps all its query heads, as transformers' attention and the
      serving engines need; a head group of its own otherwise;
    - `"neuron"`: one FFN neuron (of the layer's widest neuron family).

    Every layer must offer as many units of each kind, or a uniform width means nothing."""
    units: dict[str, dict[int, dict[Any, list[ZeroInvariantGroup]]]] = {"attention": {}, "neuron": {}}
    neuron_families: dict[int, list[ZeroInvariantGroup]] = {}
    for members in groups.families().values():
        first = members[0]
        if first.kind == "neuron" and first.layer is not None:
            if len(members) > len(neuron_families.get(first.layer, [])):
                neuron_families[first.layer] = members
    for layer, members in neuron_families.items():
        units["neuron"][layer] = {g.id: [g] for g in members}
    for group in groups:
        nest = getattr(group, "nest", None)
        if group.layer is None or (group.kind != "head" and nest is None):
            continue
        key = ("nest", nest) if nest is not None else ("group", group.id)
        units["attention"].setdefault(group.layer, {}).setdefault(key, []).append(group)
    result = {}
    for kind, per_layer in units.items():
        sizes = {len(layer_units) for layer_units in per_layer.values()}
        if not per_layer or len(sizes) > 1:
            raise ValueError(
                f"Width pruning needs the same number of {kind} units in every decoder layer; found {sorted(sizes)} "
                f"({groups.counts()})."
            )
        result[kind] = [list(per_layer[layer].values()) for layer in sorted(per_layer)]
    return result


def _input_slice(group: ZeroInvariantGroup, modules: dict[str, nn.Module]) -> tuple[str, torch.Tensor] | None:
    """The linear layer that reads the group's activations (a slice along the input dimension of its weight)."""
    for name, dim, indices in group.slices:
        owner, _, leaf = name.rpartition(".")
        if dim == 1 and leaf == "weight" and isinstance(modules.get(owner), nn.Linear):
            return owner, indices
    return None


@torch.no_grad()
def activation_importance(model: nn.Module, units: dict[str, list[list[list[ZeroInvariantGroup]]]], batches: Batches):
    """Minitron's activation importance of each unit over `batches`, per kind and layer: an attention unit by the L2
    norm of its heads' outputs (the columns the output projection reads) over every token, a neuron by the mean
    magnitude of its activation (what the down projection reads)."""
    modules = dict(model.named_modules())
    readers: dict[int, tuple[str, torch.Tensor]] = {}
    for layers in units.values():
        for layer in layers:
            for unit in layer:
                for group in unit:
                    found = _input_slice(group, modules)
                    if found is not None:
                        readers[group.id] = found
    stats: dict[str, list] = {}

    def hook(name: str) -> Callable:
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float().flatten(0, -2)
            entry = stats.setdefault(name, [0.0, 0.0, 0])
            entry[0] = entry[0] + x.square().sum(0)
            entry[1] = entry[1] + x.abs().sum(0)
            entry[2] += x.shape[0]

        return record

    handles = [
        modules[name].register_forward_pre_hook(hook(name)) for name in {owner for owner, _ in readers.values()}
    ]
    try:
        _run(model, batches, "Activation importance")
    finally:
        for handle in handles:
            handle.remove()

    def score(kind: str, unit: list[ZeroInvariantGroup]) -> float:
        read = [readers[g.id] for g in unit if g.id in readers]
        if not read:
            raise ValueError(f"No nn.Linear reads the outputs of {unit[0]}; the width baseline cannot score it.")
        if kind == "attention":
            return math.sqrt(sum(float(stats[owner][0][indices].sum()) for owner, indices in read))
        return sum(float(stats[owner][1][indices].sum()) / (stats[owner][2] * len(indices)) for owner, indices in read)

    return {kind: [[score(kind, unit) for unit in layer] for layer in layers] for kind, layers in units.items()}


def removal_flops(model: nn.Module, groups: GroupSet, ids: list[int], example: dict[str, torch.Tensor]) -> int:
    """FLOPs on `example` that removing the groups `ids` saves, counted on the sliced model."""
    return count_flops(model, example) - count_flops(construct_subnet(model, groups, ids, verify=False), example)


def width_candidates(units_per_layer: dict[str, int], unit_flops: dict[str, int], flops_to_remove: float):
    """Every uniform mix that removes at least `flops_to_remove`: for each number of attention units removed per layer
    (none up to all but one), the fewest neurons per layer that make up the rest. `unit_flops`: what one unit fewer in
    every layer saves."""
    mixes = []
    for attention in range(units_per_layer["attention"]):
        rest = flops_to_remove - attention * unit_flops["attention"]
        if rest > 0 and not unit_flops["neuron"]:
            continue
        neurons = math.ceil(rest / unit_flops["neuron"]) if rest > 0 else 0
        if neurons < units_per_layer["neuron"]:
            mixes.append({"attention": attention, "neuron": neurons})
    if not mixes:
        raise ValueError(f"No uniform width removes {flops_to_remove:,.0f} FLOPs while keeping a head and a neuron.")
    return mixes


def width_prune(
    model: nn.Module,
    groups: GroupSet,
    batches: Batches,
    flops_to_remove: float,
    loss_fn: Callable[[nn.Module, Batches], float],
) -> WidthResult:
    """Minitron-style: rank the attention units and neurons of every layer by `activation_importance` on `batches`,
    try every uniform mix from `width_candidates` (the least important units of each layer removed), keep the mix
    with the lowest `loss_fn` on the same batches, and return it sliced by `construct_subnet` (checked exact against
    the zero-masked model). FLOPs are counted on the groups' example inputs."""
    units = width_units(groups)
    scores = activation_importance(model, units, batches)
    ranked = {
        kind: [
            [unit for _, unit in sorted(zip(s, layer), key=lambda pair: pair[0])]
            for s, layer in zip(scores[kind], layers)
        ]
        for kind, layers in units.items()
    }
    example = groups.example_inputs
    per_layer = {kind: len(layers[0]) for kind, layers in units.items()}
    # what one unit fewer in every layer saves (all layers alike, as the uniform width assumes)
    unit_flops = {
        kind: removal_flops(model, groups, [g.id for layer in layers for g in layer[0]], example)
        for kind, layers in units.items()
    }

    def chosen(mix: dict[str, int]) -> list[int]:
        return sorted(
            g.id for kind, layers in ranked.items() for layer in layers for unit in layer[: mix[kind]] for g in unit
        )

    candidates = []
    for mix in width_candidates(per_layer, unit_flops, flops_to_remove):
        trial = construct_subnet(model, groups, chosen(mix), verify=False)
        candidates.append({**{f"{kind}_removed": n for kind, n in mix.items()}, "loss": loss_fn(trial, batches)})
        del trial
    best = min(candidates, key=lambda c: c["loss"])
    mix = {kind: best[f"{kind}_removed"] for kind in units}
    ids = chosen(mix)
    pruned = construct_subnet(model, groups, ids)
    kept = {kind: per_layer[kind] - mix[kind] for kind in units}
    return WidthResult(pruned, mix, kept, ids, candidates)


# ---- shared --------------------------------------------------------------------------------------------------------


def _run(model: nn.Module, batches: Batches, description: str) -> None:
    was_training = model.training
    model.eval()
    try:
        for batch in hf_logging.tqdm(batches, desc=description, leave=False):
            model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)
    finally:
        model.train(was_training)
