"""Run the label rules over an exported graph, then check that every component can be sliced consistently."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind
from transformers.utils import logging as hf_logging

from .channels import ChannelRegistry
from .labels import Label, TensorRef, labeled_ids, varies_along
from .rules import RuleContext, module_path, rule_for, unsupported

logger = logging.getLogger(__name__)


@dataclass
class Propagation:
    """The registry after propagation, plus every dense label seen (for the consistency check)."""

    registry: ChannelRegistry
    values: list[tuple[fx.Node, torch.Tensor, frozenset[int]]] = field(default_factory=list)
    tensor_ndims: dict[str, int] = field(default_factory=dict)


LARGE_GRAPH = 1000  # nodes: above this, propagation shows a progress bar by default


def propagate(program: ExportedProgram, show_progress: bool | None = None) -> Propagation:
    """Label every value of `program`'s graph, starting from its parameters and buffers."""
    result = Propagation(ChannelRegistry())
    labels: dict[fx.Node, Label] = {}
    placeholders = {spec.arg.name: spec for spec in program.graph_signature.input_specs}
    for node in program.graph.nodes:
        if node.op != "placeholder":
            continue
        spec = placeholders.get(node.name)
        value = node.meta.get("val")
        if (
            spec is not None
            and spec.kind in (InputKind.PARAMETER, InputKind.BUFFER)
            and isinstance(value, torch.Tensor)
        ):
            shape = tuple(int(n) for n in value.shape)
            result.tensor_ndims[spec.target] = len(shape)
            labels[node] = TensorRef(spec.target, shape, tuple(range(len(shape))), spec.kind == InputKind.BUFFER)
    if show_progress is None:
        show_progress = len(program.graph.nodes) > LARGE_GRAPH
    _run(program.graph_module, program.graph, labels, result, show_progress)
    return result


def _run(
    module: fx.GraphModule, graph: fx.Graph, labels: dict[fx.Node, Label], result: Propagation, show_progress: bool
) -> Label:
    nodes = list(graph.nodes)
    bar = hf_logging.tqdm(nodes, desc="Propagating channels", disable=not show_progress, leave=False)
    for node in bar:
        if node.op == "output":
            outputs = labels_in(node.args, labels)
            for label in _flat(outputs):
                if isinstance(label, TensorRef):
                    result.registry.poison(label.all_elements(result.registry), "returned by the model")
                else:
                    result.registry.poison(labeled_ids(label), f"reaches the model output ('{node.name}')")
            return outputs
        if node.op != "call_function":
            continue
        inputs = [labels.get(arg) for arg in node.all_input_nodes]
        if all(label is None or (isinstance(label, TensorRef) and label.is_buffer) for label in inputs):
            labels[node] = None
            continue
        # Private: `torch._ops.HigherOrderOperator`, args (..., get_attr subgraph, *operands) (torch 2.13, pinned
        # by tests/test_private_apis.py).
        if isinstance(node.target, torch._ops.HigherOrderOperator):
            labels[node] = _run_subgraph(module, node, labels, result)
            continue
        forbidden: set[int] = set()
        rule = rule_for(node.target) or unsupported
        try:
            label = rule(RuleContext(node, labels, result.registry, forbidden))
        except Exception as error:  # a rule that cannot follow this node: keep its channels out of every group
            label = _rule_failed(node, labels, result.registry, error)
        labels[node] = label
        for item in label if isinstance(label, tuple) else (label,):
            if isinstance(item, torch.Tensor) and item.numel():
                result.values.append((node, item, frozenset(forbidden)))
    return None


def _rule_failed(node: fx.Node, labels: dict[fx.Node, Label], registry: ChannelRegistry, error: Exception) -> Label:
    """Everything flowing into a node whose rule raised stays unprunable, with the error as the reason."""
    message = " ".join(str(error).split())[:200]
    logger.warning("Channel propagation failed at node %r (%s): %s", node.name, node.target, message)
    ctx = RuleContext(node, labels, registry, set())
    for arg in ctx.tensor_args():
        ctx.poison(
            ctx.label(arg),
            f"the propagation rule failed ({type(error).__name__}: {message}); register a "
            "rule with oto_hf.register_op_rule",
        )
    return None


def _run_subgraph(module: fx.GraphModule, node: fx.Node, labels: dict[fx.Node, Label], result: Propagation) -> Label:
    """Higher-order ops (e.g. `wrap_with_set_grad_enabled`) carry a subgraph: propagate through it."""
    submodules = [arg for arg in node.args if isinstance(arg, fx.Node) and arg.op == "get_attr"]
    if len(submodules) != 1:
        ctx = RuleContext(node, labels, result.registry, set())
        return unsupported(ctx)
    submodule = getattr(module, submodules[0].target)
    operands = node.args[node.args.index(submodules[0]) + 1 :]
    inner: dict[fx.Node, Label] = {}
    placeholders = [n for n in submodule.graph.nodes if n.op == "placeholder"]
    for placeholder, operand in zip(placeholders, operands):
        inner[placeholder] = labels.get(operand) if isinstance(operand, fx.Node) else None
    outputs = _run(submodule, submodule.graph, inner, result, show_progress=False)
    return (
        tuple(outputs[0])
        if isinstance(outputs, tuple) and len(outputs) == 1 and isinstance(outputs[0], (list, tuple))
        else outputs
    )


def labels_in(value, labels: dict[fx.Node, Label]):
    if isinstance(value, fx.Node):
        return labels.get(value)
    if isinstance(value, (list, tuple)):
        return tuple(labels_in(item, labels) for item in value)
    if isinstance(value, dict):
        return tuple(labels_in(item, labels) for item in value.values())
    return None


def _flat(label: Label):
    if isinstance(label, tuple):
        for item in label:
            yield from _flat(item)
    elif label is not None:
        yield label


def check_sliceable(propagation: Propagation, components: torch.Tensor) -> None:
    """Poison components that some value could not lose as whole slices along one allowed dimension.

    Removing a component from a tensor must delete full hyperplanes along one dimension, with nothing else in them;
    otherwise the pruned graph would not match (e.g. channels padded or concatenated with unprunable data).
    """
    registry = propagation.registry
    for node, label, forbidden in propagation.values:
        comp = torch.where(label >= 0, components[label.clamp(min=0)], -1)
        if not (comp >= 0).any():
            continue
        bad: torch.Tensor | None = None
        # Dims along which components vary are the likely slicing dims: check them first and stop once none is bad.
        dims = sorted((d for d in range(comp.dim()) if d not in forbidden), key=lambda d: not varies_along(comp, d))
        for dim in dims:
            other = tuple(d for d in range(comp.dim()) if d != dim)
            low = comp.amin(dim=other, keepdim=True) if other else comp
            high = comp.amax(dim=other, keepdim=True) if other else comp
            impure = ((low != high) | (low < 0)).expand_as(comp)
            bad_here = comp[impure & (comp >= 0)].unique()
            bad = bad_here if bad is None else bad[torch.isin(bad, bad_here)]
            if not bad.numel():
                break
        bad = comp[comp >= 0].unique() if bad is None else bad
        if bad.numel():
            path = module_path(node)
            registry.poison(
                bad,
                f"cannot be sliced consistently at node '{node.name}' ({node.target})"
                + (f" in module '{path}'" if path else ""),
            )
