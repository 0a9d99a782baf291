"""Erasing whole operators (OTOv3): find the residual branches that can go, price them, and remove them exactly.

`find_operators` lists the attention sub-blocks, FFN sub-blocks and whole blocks of a model that the traced graph shows
to be residual branches (`oto_hf/graph/operators.py`), each checked by erasing it. `erase_operators` replaces their
modules with stand-ins that hold no parameters and return zeros (`oto_hf/models/no_op.py`), and checks that the result
computes what the model computes with the operators' tensors at zero.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

# Private: `FakeTensorMode` (checked against torch 2.13, pinned by tests/test_private_apis.py).
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel

from .bottlenecks import _perturbed, _same
from .graph.export import default_example_inputs, export_model
from .graph.groups import GroupSet
from .graph.operators import Operator, find_branch_operators
from .models.no_op import ERASED_KEY, replace_module
from .record import LayerWidths, PruningRecord
from .stats import count_parameters, forward_outputs
from .subnet import SubnetMismatchError
from .utils import as_args_kwargs, eval_mode

logger = logging.getLogger(__name__)

__all__ = ["Operator", "erase_operators", "find_operators"]


def find_operators(
    model: nn.Module, groups: GroupSet, example_inputs: Any = None, *, verify: bool = True
) -> list[Operator]:
    """The operators of `model` that can be erased, with their costs.

    An operator is a residual branch found in the model's `torch.export` graph: an attention sub-block (its heads,
    plus what exists only for it: the output projection's bias, a pre-norm model's input norm), an FFN sub-block,
    or a whole block (an attention operator and the FFN operator of the same layer). A branch whose own tensors are
    shared with other code (a layer applied twice, as in ALBERT) is not an operator.

    Args:
        model (`nn.Module`): the model `groups` were discovered on.
        groups (`GroupSet`): from `discover_groups(model)`.
        example_inputs (*optional*): inputs for tracing, checking and counting FLOPs; those of `groups` by default.
        verify (`bool`, *optional*, defaults to `True`): erase the operators from a copy of the model and keep only
            those whose erasing equals zeroing their tensors and leaves the output depending on the input.

    Returns:
        `list[Operator]`: attention and FFN operators in graph order, then the blocks; each with `num_params`,
        `flops` (saved on the example inputs) and `kv_cache_bytes_per_token`.

    Example:
    ```python
    >>> operators = find_operators(model, groups)
    >>> [(op.kind, op.layer) for op in operators]
    [('attention', 0), ('ffn', 0), ('attention', 1), ('ffn', 1), ('block', 0), ('block', 1)]
    ```
    """
    inputs = groups.example_inputs if example_inputs is None else example_inputs
    operators, skipped = find_branch_operators(export_model(model, inputs), groups, model)
    for reason in skipped:
        logger.info("Not an erasable operator: %s", reason)
    if verify and not any(p.is_meta for p in model.parameters()):
        operators = _exact(model, operators, inputs)
    _price(model, groups, operators, inputs)
    return operators


def erase_operators(
    model: nn.Module,
    operators: Iterable[Operator],
    example_inputs: Any = None,
    *,
    inplace: bool = False,
    zero_first: bool = True,
    verify: bool = True,
    atol: float = 1e-4,
) -> nn.Module:
    """Remove whole operators: their modules become stand-ins with no parameters that return zeros (or, for a whole
    block that is one module, its input).

    An erased attention keeps no keys or values in the cache (a one-byte placeholder per token and layer, which
    transformers needs to count tokens). The result computes what `model` computes with the operators' tensors at zero
    (`Operator.zero_`), or, with `zero_first=False`, what `model` itself computes; with `verify=True` this is checked
    on `example_inputs` and a `SubnetMismatchError` is raised otherwise. The config records the erased modules per
    operator (`config.oto_erased`), so `save_pruned` writes a folder that the Auto classes load with them erased.
    Narrow first (`construct_subnet`), then erase.

    Args:
        model (`nn.Module`): the model the operators were found on (or that model after `construct_subnet`).
        operators (`Iterable[Operator]`): from `find_operators`; they must not overlap (a block and its own attention).
        example_inputs (*optional*): inputs for the check; derived from the config by default.
        inplace (`bool`, *optional*, defaults to `False`): modify `model` itself instead of a copy.
        zero_first (`bool`, *optional*, defaults to `True`): set the operators' tensors to zero before erasing them.
            `False` keeps `model` as it is, e.g. after training drove the operators' groups to zero: then erasing
            must not change its outputs, which fails if a tensor outside the groups still adds something (an output
            bias that training left non-zero); the error names the non-zero tensors.
        verify (`bool`, *optional*, defaults to `True`): compare outputs with the zero-masked model (`model` itself
            with `zero_first=False`).
        atol (`float`, *optional*, defaults to 1e-4): tolerance of the check, relative to the largest output entry.

    Returns:
        `nn.Module`: the model without the operators.
    """
    operators = list(operators)
    _check_disjoint(operators)
    inputs = default_example_inputs(model) if example_inputs is None else example_inputs
    result = model if inplace else copy.deepcopy(model)
    modules = dict(result.named_modules())
    missing = [path for op in operators for path in op.replaced if path not in modules]
    if missing:
        raise ValueError(
            f"{type(model).__name__} has no module {missing[0]!r}: these operators were found on another model, or "
            "some were erased already."
        )
    saved = {path: modules[path] for op in operators for path in op.replaced}
    params = dict(result.named_parameters(remove_duplicate=False))
    names = [name for op in operators for name in op.tensors if name in params]
    values = {name: params[name].detach().clone() for name in names} if inplace else {}
    params_before = count_parameters(result)
    nonzero = [name for name in names if bool(params[name].detach().any())]
    try:
        for op in operators if zero_first else ():
            op.zero_(result)
        reference = forward_outputs(result, inputs)[0] if verify else None
        specs = _record_specs(result, operators, inputs)
        for path, spec in specs.items():
            replace_module(result, path, spec)
        if reference is not None:
            _compare(reference, forward_outputs(result, inputs)[0], atol, "" if zero_first else _why(nonzero))
    except Exception:
        if inplace:  # leave the model as it was
            _restore(result, saved, params, values)
        raise
    _write_config(result, operators, specs)
    _update_record(result, operators, params_before)
    return result


# ---- checking -------------------------------------------------------------------------------------------------------
def _exact(model: nn.Module, operators: list[Operator], inputs: Any) -> list[Operator]:
    """The operators whose erasing is exact and keeps the output connected to the input, found by bisection."""

    other = _perturbed(inputs, torch.Generator().manual_seed(0))
    connected = other is not None and not _same(model, inputs, other)  # else the check cannot tell

    def fails(chosen: list[Operator]) -> bool:
        try:
            erased = erase_operators(model, chosen, inputs)
        except (SubnetMismatchError, TypeError, RuntimeError, ValueError) as error:
            logger.info("Erasing %d operators failed: %s", len(chosen), " ".join(str(error).split())[:200])
            return True
        return connected and _same(erased, inputs, other)

    def search(chosen: list[Operator]) -> list[Operator]:
        if not chosen or not fails(chosen):
            return chosen
        if len(chosen) == 1:
            logger.info("Not erasable: %r", chosen[0])
            return []
        middle = len(chosen) // 2
        return search(chosen[:middle]) + search(chosen[middle:])

    blocks = [op for op in operators if op.kind == "block"]
    branches = search([op for op in operators if op.kind != "block"])
    kept = {id(op) for op in branches}
    exact_blocks = search([op for op in blocks if _parts_of(op, operators) <= kept])
    return branches + exact_blocks


def _parts_of(block: Operator, operators: list[Operator]) -> set[int]:
    return {id(op) for op in operators if op.kind != "block" and op.layer == block.layer}


def _why(nonzero: list[str]) -> str:
    shown = ", ".join(nonzero[:4]) + (" ..." if len(nonzero) > 4 else "")
    return (
        " The model was erased as it is (`zero_first=False`), and these tensors of its operators are not zero: "
        f"{shown}. Erase with `zero_first=True` to drop them too (which changes the model), or keep those operators."
    )


def _compare(reference: list[torch.Tensor], outputs: list[torch.Tensor], atol: float, why: str = "") -> None:
    if len(reference) != len(outputs) or any(a.shape != b.shape for a, b in zip(reference, outputs)):
        raise SubnetMismatchError("The erased model returns outputs of other shapes than the zero-masked model.")
    for index, (ref, out) in enumerate(zip(reference, outputs)):
        scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
        diff = float((ref.float() - out.float()).abs().max()) if ref.numel() else 0.0
        if diff > atol * scale:
            raise SubnetMismatchError(
                f"Output {index} of the erased model differs from the reference by {diff:.3g} (tolerance "
                f"{atol * scale:.3g})."
                + (why or " A replaced module fed something other than the branch. Please report the model class.")
            )


def _check_disjoint(operators: list[Operator]) -> None:
    seen: dict[str, Operator] = {}
    for op in operators:
        for name in op.tensors:
            if name in seen:
                raise ValueError(
                    f"Operators {seen[name]!r} and {op!r} both hold {name!r}: erase a block or its parts, not both."
                )
            seen[name] = op


@torch.no_grad()
def _restore(model: nn.Module, saved: dict[str, nn.Module], params: dict, values: dict) -> None:
    modules = dict(model.named_modules())
    for path, module in saved.items():
        parent, _, name = path.rpartition(".")
        setattr(modules[parent], name, module)
    for name, value in values.items():
        params[name].copy_(value)


# ---- the stand-ins --------------------------------------------------------------------------------------------------
def _record_specs(model: nn.Module, operators: list[Operator], inputs: Any) -> dict[str, dict[str, Any]]:
    """Run the model once and note, for every module to replace, what the stand-in must return."""
    modules = dict(model.named_modules())
    modes = {path: mode for op in operators for path, mode in op.replaced.items()}
    specs: dict[str, dict[str, Any]] = {}

    def hook(path: str):
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if path not in specs:
                specs[path] = _spec(path, module, modes[path], args, kwargs, output)

        return record

    handles = [modules[path].register_forward_hook(hook(path), with_kwargs=True) for path in modes]
    try:
        forward_outputs(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    never = sorted(set(modes) - set(specs))
    if never:
        raise ValueError(f"Modules {never[:3]} did not run on the example inputs, so they cannot be erased.")
    return specs


def _spec(path: str, module: nn.Module, mode: str, args: tuple, kwargs: dict, output: Any) -> dict[str, Any]:
    where: int | str | None = next((i for i, a in enumerate(args) if isinstance(a, torch.Tensor)), None)
    if where is None:
        where = next((k for k, v in kwargs.items() if isinstance(v, torch.Tensor)), None)
    first = output[0] if isinstance(output, tuple) and output else output
    if where is None or not isinstance(first, torch.Tensor) or isinstance(output, dict):
        raise ValueError(f"Module {path!r} takes or returns no plain tensor; it cannot be erased.")
    reference = args[where] if isinstance(where, int) else kwargs[where]
    same_rank = reference.dim() == first.dim()
    shape = [None if same_rank and size == reference.shape[i] else int(size) for i, size in enumerate(first.shape)]
    if mode == "identity" and (first.shape != reference.shape or first.dtype != reference.dtype):
        raise ValueError(f"Module {path!r} does not return a tensor shaped like its input; it cannot be skipped.")
    layers = [m.layer_idx for m in module.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    return {
        "mode": mode,
        "input": where,
        "shape": shape,
        "outputs": len(output) if isinstance(output, tuple) else None,
        "cache_layer": layers[0] if layers else None,
        "attributes": {
            name: value
            for name, value in vars(module).items()
            if not name.startswith("_") and name != "training" and isinstance(value, (str, int, float, bool))
        },
    }


def _relative(model: nn.Module, name: str) -> str:
    prefix = getattr(model, "base_model_prefix", "")
    return name[len(prefix) + 1 :] if prefix and hasattr(model, prefix) and name.startswith(prefix + ".") else name


def _write_config(model: nn.Module, operators: list[Operator], specs: dict[str, dict[str, Any]]) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    entries = list(getattr(config, ERASED_KEY, None) or [])
    for op in operators:
        modules = {_relative(model, path): specs[path] for path in op.replaced}
        entries.append({"layer": op.layer, "kind": op.kind, "modules": modules})
    setattr(config, ERASED_KEY, entries)


def _update_record(model: nn.Module, operators: list[Operator], params_before: int) -> None:
    """Keep the pruning record true: the erased families keep no group, erased tensors have no shape."""
    record = PruningRecord.from_model_or_config(model)
    record = copy.deepcopy(record) if record is not None else PruningRecord()
    replaced = [path for op in operators for path in op.replaced]
    record.tensor_shapes = {name: shape for name, shape in record.tensor_shapes.items() if not _inside(name, replaced)}
    record.module_attributes = {
        name: values for name, values in record.module_attributes.items() if not _inside(name + ".", replaced)
    }
    for op in operators:
        attention, ffn = ["head", "kv_head"], ["neuron", "channel"]
        kinds = {"attention": attention, "ffn": ffn, "block": attention + ffn}[op.kind]
        matched = [w for w in record.layers if w.kind in kinds and w.layer == op.layer and w.module == op.module]
        for widths in matched:
            widths.kept = 0
        if not matched:
            record.layers.append(LayerWidths("head" if op.kind != "ffn" else "neuron", op.layer, op.module,
                                             len(op.group_ids), 0))  # fmt: skip
    if record.params_before is None:
        record.params_before = params_before
    record.params_after = count_parameters(model)
    model.oto_pruning = record


def _inside(name: str, paths: list[str]) -> bool:
    return any(name.startswith(path + ".") for path in paths)


# ---- costs ----------------------------------------------------------------------------------------------------------
def _price(model: nn.Module, groups: GroupSet, operators: list[Operator], inputs: Any) -> None:
    """FLOPs each operator's erasing saves, and its key-value cache per token.

    One forward of a meta copy on fake tensors, counted per module: erasing saves what the replaced modules compute
    (their stand-ins compute nothing that the counter counts).
    """
    meta = _meta_copy(model)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    # Private: `torch.utils._pytree` (checked against torch 2.13, pinned by tests/test_private_apis.py).
    fake = torch.utils._pytree.tree_map(
        lambda t: mode.from_tensor(t.to("meta")) if isinstance(t, torch.Tensor) else t, inputs
    )
    args, kwargs = as_args_kwargs(fake)
    counter = FlopCounterMode(display=False)
    with mode, counter, torch.no_grad(), eval_mode(meta):
        meta(*args, **kwargs)
    # Keys are the root's class name and the module path (torch 2.13's module tracker).
    per_module = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}
    root = type(model).__name__
    for op in operators:
        op.flops = sum(per_module.get(f"{root}.{path}", 0) for path in op.replaced)
        op.kv_cache_bytes_per_token = _kv_bytes(model, groups, op)


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` on the meta device, made without copying any weight."""
    memo = {id(t): torch.empty_like(t, device="meta") for t in [*model.parameters(), *model.buffers()]}
    memo.update({id(p): nn.Parameter(memo[id(p)], requires_grad=p.requires_grad) for p in model.parameters()})
    return copy.deepcopy(model, memo)


def _kv_bytes(model: nn.Module, groups: GroupSet, op: Operator) -> int:
    """Keys and values of one token: `head_dim` entries each per head group (a KV head under GQA), for models that
    cache them."""
    config = getattr(model, "config", None)
    generates = isinstance(model, PreTrainedModel) and model.can_generate()
    if config is None or not generates or not getattr(config, "use_cache", False):
        return 0
    num_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    head_dim = getattr(config, "head_dim", None) or (hidden // num_heads if num_heads and hidden else 0)
    heads = [groups[i] for i in op.group_ids if groups[i].kind in ("head", "kv_head")]
    # Under GQA each query head names its KV group (`nest`); without it, each head has its own keys and values.
    count = len({g.nest for g in heads}) if heads and getattr(heads[0], "nest", None) is not None else len(heads)
    return 2 * count * head_dim * next(model.parameters()).element_size()
