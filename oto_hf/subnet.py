"""`construct_subnet`: slice zero groups out of a model, keeping its class, and check the result is exact."""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from .graph.families import FamilyKey
from .graph.groups import KV_HEAD, GroupSet, ZeroInvariantGroup
from .graph.nesting import RemovalPlan, nested_families, plan_removal
from .models.pruned import CONFIG_PREFIX, LayerConfig, get_module_attribute, set_module_attribute
from .record import LayerWidths, PruningRecord
from .stats import count_parameters, forward_outputs
from .utils import has_inputs

logger = logging.getLogger(__name__)

# Integer attributes of attention modules that count heads or their total width: scaled by the kept fraction. With
# query heads nested in KV groups, the KV counts follow the KV groups kept, the others the query heads kept.
HEAD_ATTRIBUTES = (
    "num_heads",
    "num_attention_heads",
    "n_head",
    "n_heads",
    "num_key_value_heads",
    "num_kv_heads",
    "all_head_size",
    "split_size",
    "inner_dim",
)
KV_ATTRIBUTES = ("num_key_value_heads", "num_kv_heads")
KV_CONFIG_KEYS = ("num_key_value_heads",)
QUERY_PER_KV_ATTRIBUTE = "num_key_value_groups"  # transformers' `repeat_kv` factor
# Integer attributes of feed-forward modules that hold their hidden width.
NEURON_ATTRIBUTES = ("intermediate_size", "ffn_dim", "n_inner")
# Config keys that hold the number of heads, and the width of feed-forward blocks, in common architectures.
HEAD_CONFIG_KEYS = ("num_attention_heads", "n_head", "n_heads", "num_heads", "num_key_value_heads")
FFN_CONFIG_KEYS = ("intermediate_size", "n_inner", "hidden_dim", "ffn_dim", "decoder_ffn_dim", "encoder_ffn_dim")


class SubnetMismatchError(RuntimeError):
    """The sliced model's outputs differ from the zero-masked model's (nothing is returned)."""


def construct_subnet(
    model: nn.Module,
    groups: GroupSet,
    group_ids: Iterable[int] | None = None,
    *,
    inplace: bool = False,
    allow_empty_layers: bool = False,
    verify: bool = True,
    example_inputs: Any = None,
    atol: float = 1e-4,
) -> nn.Module:
    """Remove groups from `model`, slicing every tensor in them and updating width attributes; the class is kept.

    Removing a group is exact: the result computes what `model` computes with those groups set to zero. With
    `verify=True` this is checked on the example inputs (those the groups were discovered with, unless
    `example_inputs` is given) and a `SubnetMismatchError` is raised, with the model left unchanged, if they differ.

    Args:
        model (`nn.Module`): the model `groups` were discovered on.
        groups (`GroupSet`): from `discover_groups(model)`.
        group_ids (`Iterable[int]`, *optional*): groups to remove. Defaults to every group whose parameters are all
            exactly zero (e.g. after training with DHSPG).
        inplace (`bool`, *optional*, defaults to `False`): modify `model` itself instead of a copy.
        allow_empty_layers (`bool`, *optional*, defaults to `False`): allow removing every group of one layer's
            attention, feed-forward or conv block.
        verify (`bool`, *optional*, defaults to `True`): compare outputs with the zero-masked model (skipped on the
            `meta` device).
        example_inputs (*optional*): inputs for the check and the FLOP counts.
        atol (`float`, *optional*, defaults to 1e-4): tolerance of the check, relative to the largest output entry.

    Query heads nested in KV groups (grouped-query attention) are removed as `oto_hf.graph.nesting.plan_removal`
    says: with their KV group, taking a KV group without query heads along, and keeping, as zero padding, as many
    query heads in every KV group of a layer.

    Returns:
        `nn.Module`: the smaller model. Its `oto_pruning` attribute (a `PruningRecord`) records the new tensor
        shapes, the changed module attributes, the groups kept (and padded) per layer, and parameters/FLOPs before
        and after.
    """
    ids = groups.check_ids(groups.zero_group_ids(model) if group_ids is None else group_ids)
    families = groups.families()
    plan = plan_removal(groups, ids)
    _check_empty_layers(groups, families, sorted({*plan.removed, *plan.padded}), allow_empty_layers)
    result = model if inplace else copy.deepcopy(model)
    inputs = groups.example_inputs if example_inputs is None else example_inputs
    on_meta = any(p.is_meta for p in result.parameters())
    backup = _snapshot(result, groups, ids) if inplace else None
    params_before = count_parameters(result)

    groups.zero_(result, ids)
    check = verify and not on_meta and has_inputs(inputs)
    reference, flops_before = forward_outputs(result, inputs, count=True) if check else (None, None)
    try:
        shapes, attributes = _slice(result, groups, plan, families)
        flops_after = None
        if check:
            outputs, flops_after = forward_outputs(result, inputs, count=True)
            _compare(reference, outputs, atol)
    except Exception:
        if backup is not None:
            _restore(result, backup)
        raise

    record = _record(result, plan, families, shapes, attributes)
    record.params_before, record.params_after = params_before, count_parameters(result)
    record.flops_before, record.flops_after = flops_before, flops_after
    result.oto_pruning = record
    # Meta-device calls (e.g. FLOP costs per block) are bookkeeping, not pruning: keep them out of the INFO log.
    logger.log(
        logging.DEBUG if on_meta else logging.INFO,
        "Removed %d groups%s: %s -> %s parameters%s",
        len(plan.removed),
        f" ({len(plan.padded)} query heads kept as zero padding)" if plan.padded else "",
        f"{params_before:,}",
        f"{record.params_after:,}",
        f", {flops_before:,} -> {flops_after:,} FLOPs" if flops_after is not None else "",
    )
    return result


# ---- probing: can every family really be sliced? --------------------------------------------------------------------
def unremovable_families(model: nn.Module, groups: GroupSet) -> dict[tuple, str]:
    """Families whose removal breaks `model` (a crash or different outputs), with the error, found by bisection.

    Discovery proves that the weights of a group can be zeroed without effect; slicing them away also needs every
    width the forward uses to follow (split points, head counts). A model that computes a width from something
    oto_hf does not change (another tensor's shape, a global constant) is caught here. One or two groups are removed
    from each family (the whole family if it has one group), so neighbouring layers end with different widths.
    """
    members = groups.families()
    keys = list(members)

    def attempt(chosen: list[tuple]) -> str | None:
        ids = [i for index, key in enumerate(chosen) for i in _probe_ids(index, members[key])]
        level = logger.level
        logger.setLevel(logging.WARNING)  # a probe, not a pruning: keep "Removed ... groups" out of the INFO log
        try:
            construct_subnet(model, groups, ids)
        except Exception as error:  # any failure means these families cannot be removed as discovered
            return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        finally:
            logger.setLevel(level)
        return None

    def search(chosen: list[tuple], error: str | None) -> dict[tuple, str]:
        if error is None:
            return {}
        if len(chosen) == 1:
            return {chosen[0]: error}
        halves = chosen[: len(chosen) // 2], chosen[len(chosen) // 2 :]
        found = {}
        for half in halves:
            found.update(search(half, attempt(half)))
        return found or {key: error for key in chosen}  # the halves only fail together: keep them all out

    return search(keys, attempt(keys)) if keys else {}


def _probe_ids(index: int, members: list[ZeroInvariantGroup]) -> list[int]:
    """One or two groups of a family; query heads nested in KV groups: one of every KV group (anything less is
    padded back)."""
    if members[0].nest is not None and members[0].kind != KV_HEAD:
        return list({g.nest: g.id for g in reversed(members)}.values())
    return [g.id for g in members[: 2 if index % 2 and len(members) > 2 else 1]]


# ---- families: groups that share the same tensors (the heads of one layer, the neurons of one FFN) ------------------
def _check_empty_layers(groups: GroupSet, families: dict, ids: list[int], allow: bool) -> None:
    if allow:
        return
    removed = set(ids)
    for members in families.values():
        if len(members) > 1 and all(g.id in removed for g in members):
            first = members[0]
            where = f"layer {first.layer} ({first.module})" if first.layer is not None else first.module or "the model"
            raise ValueError(
                f"Removing these groups would remove all {len(members)} {first.kind}s of {where}. Keep at least one, "
                "or pass `allow_empty_layers=True` if an empty block is intended."
            )


# ---- slicing --------------------------------------------------------------------------------------------------------
def _owners(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str, bool]]]:
    """Every (name, module, attribute, is_parameter) holding each tensor, so tied tensors are sliced once."""
    owners: dict[int, list[tuple[str, nn.Module, str, bool]]] = defaultdict(list)
    # Private: `nn.Module._parameters` / `_buffers`, read and replaced here, in `_slice` and in `_snapshot` /
    # `_restore` (checked against torch 2.13, pinned by tests/test_private_apis.py).
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        for attr, tensor in module._parameters.items():
            if tensor is not None:
                owners[id(tensor)].append((prefix + attr, module, attr, True))
        for attr, tensor in module._buffers.items():
            if tensor is not None:
                owners[id(tensor)].append((prefix + attr, module, attr, False))
    return owners


@torch.no_grad()
def _slice(
    model: nn.Module, groups: GroupSet, plan: RemovalPlan, families: dict
) -> tuple[dict[str, list[int]], dict[str, dict[str, Any]]]:
    ids = plan.removed
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    removal: dict[int, dict[int, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
    for group_id in ids:
        group = groups[group_id]
        for name, dim, indices in [*group.slices, *group.buffer_slices]:
            if name not in tensors:
                raise ValueError(f"Group {group_id} names {name!r}, which {type(model).__name__} does not have.")
            removal[id(tensors[name])][dim].append(indices)

    owners = _owners(model)
    changed_modules: dict[int, nn.Module] = {}
    shapes: dict[str, list[int]] = {}
    for key, dims in hf_logging.tqdm(removal.items(), desc="Slicing", disable=len(removal) < 64, leave=False):
        holders = owners[key]
        old = getattr(holders[0][1], holders[0][2])
        new = old.detach()
        for dim, chunks in dims.items():
            keep = torch.ones(new.shape[dim], dtype=torch.bool)
            keep[torch.cat(chunks)] = False
            new = new.index_select(dim, keep.nonzero().flatten().to(new.device))
        replacement = nn.Parameter(new.clone(), requires_grad=old.requires_grad) if holders[0][3] else new.clone()
        for name, module, attr, is_param in holders:
            (module._parameters if is_param else module._buffers)[attr] = replacement
            changed_modules[id(module)] = module
            shapes[name] = list(new.shape)

    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    attributes: dict[str, dict[str, Any]] = defaultdict(dict)
    for module in changed_modules.values():
        attributes[names[id(module)]].update(_layer_widths(module))
    removed = set(ids)
    nested = nested_families(groups)
    for key, members in families.items():
        count = sum(1 for g in members if g.id in removed)
        if count and key not in nested and members[0].kind != KV_HEAD:
            _scale_block_attributes(model, members, len(members) - count, attributes)
    for nests in nested.values():
        _set_attention_widths(model, nests, removed, attributes)
    return shapes, {k: v for k, v in attributes.items() if v}


def _set_attention_widths(model: nn.Module, nests: list, removed: set[int], attributes: dict) -> None:
    """Head counts of an attention layer with query heads nested in KV groups: query heads and KV groups kept."""
    query_total = sum(len(children) for _, children in nests)
    query_kept = sum(1 for _, children in nests for c in children if c.id not in removed)
    kv_kept = sum(1 for _, children in nests if any(c.id not in removed for c in children))
    if query_kept == query_total:
        return
    prefix = _common_module(nests[0][1][0])
    for module_name, module in model.named_modules():
        if prefix and module_name != prefix and not module_name.startswith(prefix + "."):
            continue
        for attr in HEAD_ATTRIBUTES:
            if attr in KV_ATTRIBUTES:
                _scale(module_name, module, attr, kv_kept, len(nests), attributes)
            else:
                _scale(module_name, module, attr, query_kept, query_total, attributes)
        per_kv = getattr(module, QUERY_PER_KV_ATTRIBUTE, None)
        if isinstance(per_kv, int) and kv_kept and per_kv != query_kept // kv_kept:
            setattr(module, QUERY_PER_KV_ATTRIBUTE, query_kept // kv_kept)
            attributes[module_name][QUERY_PER_KV_ATTRIBUTE] = query_kept // kv_kept
        config = getattr(module, "config", None)
        if prefix and isinstance(config, (PretrainedConfig, LayerConfig)) and not isinstance(module, PreTrainedModel):
            for key in HEAD_CONFIG_KEYS:
                kept, total = (kv_kept, len(nests)) if key in KV_CONFIG_KEYS else (query_kept, query_total)
                _scale(module_name, module, CONFIG_PREFIX + key, kept, total, attributes)


def _layer_widths(module: nn.Module) -> dict[str, Any]:
    """Set the size attributes of standard layers from their (new) weights; return what changed."""
    weight = getattr(module, "weight", None)
    updates: dict[str, Any] = {}
    if isinstance(module, nn.Linear):
        updates = {"out_features": weight.shape[0], "in_features": weight.shape[1]}
    # Private: the `_ConvNd` and `_NormBase` base classes; Conv1D's `nx`/`nf` (torch 2.13, transformers 5.24,
    # pinned by tests/test_private_apis.py).
    elif isinstance(module, nn.modules.conv._ConvNd):
        out_channels, in_per_group = (weight.shape[1], weight.shape[0]) if module.transposed else weight.shape[:2]
        depthwise = module.groups > 1 and module.groups == module.in_channels
        groups = out_channels if depthwise else module.groups
        updates = {
            "out_channels": out_channels * (groups if module.transposed else 1),
            "in_channels": in_per_group * groups,
            "groups": groups,
        }
        if module.transposed:
            updates["out_channels"] = weight.shape[1] * groups
            updates["in_channels"] = weight.shape[0]
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        reference = weight if weight is not None else module.running_mean
        updates = {"num_features": reference.shape[0]}
    elif isinstance(module, nn.LayerNorm) and weight is not None:
        updates = {"normalized_shape": tuple(weight.shape)}
    elif isinstance(module, nn.GroupNorm) and weight is not None:
        updates = {"num_channels": weight.shape[0]}
    elif isinstance(module, nn.Embedding):
        updates = {"num_embeddings": weight.shape[0], "embedding_dim": weight.shape[1]}
    elif type(module).__name__ == "Conv1D" and weight is not None:  # transformers.pytorch_utils.Conv1D
        updates = {"nx": weight.shape[0], "nf": weight.shape[1]}
    changed = {}
    for attr, value in updates.items():
        if getattr(module, attr, None) != value:
            setattr(module, attr, value)
            changed[attr] = list(value) if isinstance(value, tuple) else int(value)
    return changed


def _scale_block_attributes(model: nn.Module, members: list[ZeroInvariantGroup], kept: int, attributes: dict) -> None:
    """Scale head counts (or FFN widths) of the modules that own a family's tensors, and of their own configs."""
    kind = members[0].kind
    names = HEAD_ATTRIBUTES if kind == "head" else NEURON_ATTRIBUTES
    config_keys = HEAD_CONFIG_KEYS if kind == "head" else FFN_CONFIG_KEYS
    prefix = _common_module(members[0])
    total = len(members)
    for module_name, module in model.named_modules():
        if not prefix or module_name == prefix or module_name.startswith(prefix + "."):
            for attr in names:
                _scale(module_name, module, attr, kept, total, attributes)
            config = getattr(module, "config", None)
            layer_config = isinstance(config, (PretrainedConfig, LayerConfig))
            if prefix and layer_config and not isinstance(module, PreTrainedModel):
                # Layers that read widths from the shared config at every forward (fused qkv split points, modules
                # rebuilt from the config) get their own copy with their own widths.
                for key in config_keys:
                    _scale(module_name, module, CONFIG_PREFIX + key, kept, total, attributes)


def _scale(module_name: str, module: nn.Module, attr: str, kept: int, total: int, attributes: dict) -> None:
    value = get_module_attribute(module, attr)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0 and (value * kept) % total == 0:
        scaled = value * kept // total
        if scaled != value:
            set_module_attribute(module, attr, scaled)
            attributes[module_name][attr] = scaled


def _common_module(group: ZeroInvariantGroup) -> str:
    paths = [s.name.split(".")[:-1] for s in group.slices]
    common: list[str] = []
    for parts in zip(*paths):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


# ---- checking and bookkeeping ---------------------------------------------------------------------------------------
def _compare(reference: list[torch.Tensor], outputs: list[torch.Tensor], atol: float) -> None:
    if len(reference) != len(outputs):
        raise SubnetMismatchError(f"The pruned model returns {len(outputs)} tensors, the original {len(reference)}.")
    for index, (ref, out) in enumerate(zip(reference, outputs)):
        if ref.shape != out.shape:
            raise SubnetMismatchError(
                f"Output {index} has shape {tuple(out.shape)} after pruning, {tuple(ref.shape)} before."
            )
        scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
        diff = float((ref.float() - out.float()).abs().max()) if ref.numel() else 0.0
        if diff > atol * scale:
            raise SubnetMismatchError(
                f"Output {index} of the pruned model differs from the zero-masked model by {diff:.3g} (tolerance "
                f"{atol * scale:.3g}). A module probably keeps a width attribute oto_hf does not know; please report "
                "the model class. The model was left unchanged."
            )


def _snapshot(model: nn.Module, groups: GroupSet, ids: list[int]) -> dict:
    """What an in-place call changes: tensor objects, the values it zeroes, and plain attributes."""
    params = dict(model.named_parameters(remove_duplicate=False))
    touched = {s.name for i in ids for s in groups[i].slices}
    return {
        "tensors": [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()],
        "values": [(params[name], params[name].detach().clone()) for name in touched],
        "attributes": [
            (m, {k: v for k, v in vars(m).items() if isinstance(v, (int, tuple, PretrainedConfig, LayerConfig))})
            for m in model.modules()
        ],
    }


@torch.no_grad()
def _restore(model: nn.Module, snapshot: dict) -> None:
    for module, params, buffers in snapshot["tensors"]:
        module._parameters.update(params)
        module._buffers.update(buffers)
    for param, value in snapshot["values"]:
        param.copy_(value)
    for module, values in snapshot["attributes"]:
        for attr, value in values.items():
            setattr(module, attr, value)


def _record(
    model: nn.Module, plan: RemovalPlan, families: dict[FamilyKey, list], shapes: dict, attributes: dict
) -> PruningRecord:
    """What `save_pruned` needs to rebuild the architecture, merged with any earlier pruning of the same model."""
    previous = PruningRecord.from_model_or_config(model) or PruningRecord()
    removed, padded = set(plan.removed), set(plan.padded)
    layers = [
        LayerWidths(
            kind=members[0].kind,
            layer=members[0].layer,
            module=members[0].module,
            total=len(members),
            kept=sum(1 for g in members if g.id not in removed),
            padded=sum(1 for g in members if g.id in padded),
        )
        for members in families.values()
    ]
    module_attributes = {name: dict(values) for name, values in previous.module_attributes.items()}
    for module_name, values in attributes.items():
        module_attributes.setdefault(module_name, {}).update(values)
    return PruningRecord(
        layers=layers,
        tensor_shapes={**previous.tensor_shapes, **shapes},
        module_attributes=module_attributes,
        dense_config=previous.dense_config,
    )
