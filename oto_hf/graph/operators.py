"""Erasable operators (OTOv3): residual branches found in the traced graph, and the modules that erasing them removes.

A residual branch runs from a fork of the residual stream to the add that joins it back (`x + f(x)`). When every
tensor that exists only for the branch is zero, the branch adds exactly zero, so the branch can be *erased*: its
modules are replaced by stand-ins that compute nothing (`oto_hf.models.no_op`). An attention sub-block, an FFN
sub-block and, where the two follow each other in one layer, the whole block are operators. Post-norm models keep the
norm after the add: it is not in the branch.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from .groups import GroupSet

logger = logging.getLogger(__name__)

OperatorKind = Literal["attention", "ffn", "block"]
aten = torch.ops.aten
# Ops that return their input unchanged when dtype and shape do not change (casts, copies, eval-mode dropout).
_ALIAS_OPS = {
    aten.to.dtype,
    aten.to.device,
    aten.to.dtype_layout,
    aten._to_copy.default,
    aten.clone.default,
    aten.alias.default,
    aten.contiguous.default,
    aten.detach.default,
}
_IGNORED_OPS = {aten._assert_tensor_metadata.default}
_ADDS = {aten.add.Tensor, aten.add_.Tensor}


@dataclass
class Operator:
    """A residual branch (or a whole block of two) that can be erased: when its tensors are zero it adds nothing.

    Args:
        kind (`str`): `"attention"` (the branch holds attention heads), `"ffn"` or `"block"` (both of one layer).
        layer (`int`, *optional*): the `layer` of its groups.
        module (`str`): the block its groups live in, e.g. `"model.layers.3"`.
        group_ids (`list[int]`): the groups (ids in the `GroupSet`) that lie wholly inside it.
        tensors (`list[str]`): every parameter and buffer that exists only for it; erasing removes them all.
        extra_params (`list[str]`): the parameters among them that no member group slices (the output projection's
            bias, a pre-norm branch's own norm, ...): they must be zero too for the branch to add nothing.
        replaced (`dict[str, str]`): module path -> `"zero"` (returns zeros) or `"identity"` (returns its input):
            the modules erasing replaces.
        num_params (`int`): parameter entries removed with it.
        flops (`int`, *optional*): FLOPs of one forward on the example inputs that erasing saves.
        kv_cache_bytes_per_token (`int`): bytes of key-value cache per token it holds (attention of a model that
            caches keys and values; 0 otherwise).
    """

    kind: OperatorKind
    layer: int | None
    module: str
    group_ids: list[int]
    tensors: list[str]
    extra_params: list[str]
    replaced: dict[str, str]
    num_params: int = 0
    flops: int | None = None
    kv_cache_bytes_per_token: int = 0

    def __repr__(self) -> str:
        return (
            f"Operator(kind={self.kind!r}, layer={self.layer}, module={self.module!r}, groups={len(self.group_ids)}, "
            f"extra_params={self.extra_params}, params={self.num_params}, flops={self.flops}, "
            f"kv_cache_bytes_per_token={self.kv_cache_bytes_per_token})"
        )

    @torch.no_grad()
    def zero_(self, model: nn.Module) -> nn.Module:
        """Set every parameter of the operator to zero, in place: the model then computes what erasing it gives."""
        params = dict(model.named_parameters(remove_duplicate=False))
        for name in self.tensors:
            if name in params:
                params[name].zero_()
        return model


@dataclass
class _Branch:
    fork: fx.Node
    output: fx.Node
    root: fx.Node
    sum_nodes: frozenset[fx.Node]
    nodes: frozenset[fx.Node]


class _Graph:
    """Reachability and module membership of an exported graph's nodes."""

    def __init__(self, program: ExportedProgram) -> None:
        self.nodes = list(program.graph.nodes)
        self.index = {node: i for i, node in enumerate(self.nodes)}
        specs = {spec.arg.name: spec for spec in program.graph_signature.input_specs}
        self.tensor_of: dict[fx.Node, str] = {}
        active: set[fx.Node] = set()
        for node in self.nodes:
            spec = specs.get(node.name) if node.op == "placeholder" else None
            if spec is not None and spec.kind == InputKind.USER_INPUT:
                active.add(node)
            elif spec is not None and spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                self.tensor_of[node] = spec.target
            elif node.op == "call_function" and any(arg in active for arg in node.all_input_nodes):
                active.add(node)
        self.active = active  # nodes whose value depends on the user's inputs
        self.canonical: dict[fx.Node, fx.Node] = {}
        for node in self.nodes:
            source = node.args[0] if node.op == "call_function" and node.args else None
            alias = isinstance(source, fx.Node) and _is_alias(node, source)
            self.canonical[node] = self.canonical[source] if alias else node
        self.modules: dict[str, set[fx.Node]] = defaultdict(set)
        for node in active:
            if node.op == "call_function" and node.target not in _IGNORED_OPS:
                for path in _module_paths(node):
                    self.modules[path].add(node)

    def descendants(self, start: fx.Node) -> set[fx.Node]:
        seen, stack = set(), [start]
        while stack:
            for user in stack.pop().users:
                if user not in seen:
                    seen.add(user)
                    stack.append(user)
        return seen

    def ancestors(self, start: fx.Node) -> set[fx.Node]:
        seen, stack = set(), [start]
        while stack:
            for arg in stack.pop().all_input_nodes:
                if arg not in seen:
                    seen.add(arg)
                    stack.append(arg)
        return seen

    def consumers(self, tensor: fx.Node) -> set[fx.Node]:
        """The first nodes on input-dependent values that a parameter reaches (through weight-only ops)."""
        found, seen, stack = set(), set(), [tensor]
        while stack:
            for user in stack.pop().users:
                if user in seen or user.op != "call_function":
                    continue
                seen.add(user)
                if user in self.active:
                    found.add(user)
                else:
                    stack.append(user)
        return found


def _is_alias(node: fx.Node, source: fx.Node) -> bool:
    if node.target is aten.dropout.default:
        return len(node.args) > 2 and node.args[2] is False
    if node.target not in _ALIAS_OPS:
        return False
    new, old = node.meta.get("val"), source.meta.get("val")
    same = isinstance(new, torch.Tensor) and isinstance(old, torch.Tensor)
    return same and new.shape == old.shape and new.dtype == old.dtype


def _module_paths(node: fx.Node) -> list[str]:
    # `nn_module_stack` entries are (path, type), outermost first (torch 2.13, pinned by tests/test_private_apis.py).
    stack = node.meta.get("nn_module_stack") or {}
    return [str(path) for path, _ in stack.values() if path]


def _residual_branches(graph: _Graph) -> list[_Branch]:
    """Every `x + f(x)` of the graph, with the terms of chained adds (`x + f(x) + g(x)`) taken apart."""

    def is_sum(node: fx.Node) -> bool:
        if node.op != "call_function" or node.target not in _ADDS or node not in graph.active:
            return False
        inputs = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        shape = node.meta["val"].shape
        return len(inputs) == 2 and all(a in graph.active and a.meta["val"].shape == shape for a in inputs)

    branches = []
    for node in graph.nodes:
        if not is_sum(node) or (len(node.users) == 1 and is_sum(next(iter(node.users)))):
            continue  # not an add of two activations, or an inner add of a chain (taken apart from its last add)
        terms, inner, stack, casts = [], {node}, [node], {}
        while stack:
            for arg in stack.pop().args[:2]:
                if arg is not node and is_sum(arg) and len(arg.users) == 1 and arg not in inner:
                    inner.add(arg)
                    stack.append(arg)
                else:
                    chain = [arg]  # the casts and eval-mode dropouts between a term and the add
                    while chain[-1] is not graph.canonical[arg]:
                        chain.append(chain[-1].args[0])
                    terms.append(chain[-1])
                    casts[chain[-1]] = set(chain[:-1])
        ancestry = {term: graph.ancestors(term) for term in terms}
        forks = [f for f in terms if all(t is f or f in ancestry[t] for t in terms)]
        if len(forks) != 1:
            continue
        fork = forks[0]
        below = graph.descendants(fork)
        aliases = {n for n in below if graph.canonical[n] is fork}
        for term in terms:
            if term is not fork:
                nodes = (below & ancestry[term]) | {term} | casts[term]
                branches.append(_Branch(fork, term, node, frozenset(inner), frozenset(nodes - aliases)))
    return branches


def _replaced_modules(graph: _Graph, inside: set[fx.Node], fork: set[fx.Node]) -> list[str]:
    """The outermost modules all of whose input-dependent nodes are `inside` (or aliases of the `fork`)."""
    allowed = inside | {n for n in graph.active if graph.canonical[n] in fork}
    candidates = {path for node in inside for path in _module_paths(node)}
    chosen = sorted(path for path in candidates if graph.modules[path] <= allowed and graph.modules[path] & inside)
    return [path for path in chosen if not any(path.startswith(other + ".") for other in chosen)]


def _owns(module: str, tensors: Iterable[str]) -> bool:
    return any(name.startswith(module + ".") for name in tensors)


def _under(name: str, modules: Iterable[str]) -> bool:
    return any(name.startswith(module + ".") for module in modules)


def find_branch_operators(
    program: ExportedProgram, groups: GroupSet, model: nn.Module
) -> tuple[list[Operator], list[str]]:
    """The erasable operators of an exported model whose groups are `groups`, and why other branches are not.

    Structural only: `oto_hf.erasing.find_operators` checks by erasing that each one is exact, and prices them.
    """
    graph = _Graph(program)
    numels = {name: t.numel() for name, t in [*model.named_parameters(), *model.named_buffers()]}
    registered = list(numels)
    params = {name for name, _ in model.named_parameters()}
    skipped: list[str] = []
    found: list[tuple[Operator, _Branch]] = []
    consumers = {name: graph.consumers(node) for node, name in graph.tensor_of.items() if name in numels}
    used = {name for name, users in consumers.items() if users}
    for branch in _residual_branches(graph):
        exclusive = sorted(name for name, users in consumers.items() if users and users <= branch.nodes)
        members = [g for g in groups if all(s.name in exclusive for s in g.slices)]
        where = f"the branch ending at node '{branch.output.name}'"
        if not members:
            skipped.append(f"{where}: no group lies wholly inside it")
            continue
        # Modules without tensors (dropout, activations) stay: they pass the stand-ins' zeros on.
        replaced = [m for m in _replaced_modules(graph, set(branch.nodes), {branch.fork}) if _owns(m, registered)]
        removed = [name for name in registered if _under(name, replaced)]
        missing = [name for name in exclusive if not _under(name, replaced)]
        shared = [name for name in removed if name not in exclusive and name in used]
        if missing or shared or not replaced:
            skipped.append(
                f"{where}: its own tensors {missing[:3]} live outside the modules it could replace"
                if missing
                else f"{where}: replacing its modules would remove tensors used elsewhere ({shared[:3]})"
            )
            continue
        kind: OperatorKind = "attention" if any(g.kind in ("head", "kv_head") for g in members) else "ffn"
        sliced = {s.name for g in members for s in g.slices}
        operator = Operator(
            kind=kind,
            layer=members[0].layer,
            module=members[0].module,
            group_ids=[g.id for g in members],
            tensors=removed,
            extra_params=[name for name in removed if name in params and name not in sliced],
            replaced={path: "zero" for path in replaced},
            num_params=sum(numels[name] for name in removed if name in params),
        )
        found.append((operator, branch))
    operators = [operator for operator, _ in found]
    operators += _blocks(graph, found, [name for name in registered if name in used])
    return operators, skipped


def _blocks(graph: _Graph, found: list[tuple[Operator, _Branch]], used: list[str]) -> list[Operator]:
    """An attention operator and the FFN operator that follows it in the same layer, erased together.

    Where one module holds exactly the two branches and their adds (a pre-norm or parallel block), erasing both
    makes that module return its input, so the whole module is replaced (if it holds no tensor used elsewhere).
    """
    blocks = []
    by_layer: dict[int, dict[str, tuple[Operator, _Branch]]] = defaultdict(dict)
    for operator, branch in found:
        if operator.layer is not None:
            by_layer[operator.layer].setdefault(operator.kind, (operator, branch))
    for layer, pair in sorted(by_layer.items()):
        if set(pair) != {"attention", "ffn"}:
            continue
        (attention, first), (ffn, second) = pair["attention"], pair["ffn"]
        nodes = set(first.nodes | second.nodes | first.sum_nodes | second.sum_nodes)
        consecutive = second.fork is first.root or first.fork is second.fork
        whole = _replaced_modules(graph, nodes, {first.fork, second.fork}) if consecutive else []
        tensors = sorted({*attention.tensors, *ffn.tensors})
        inside = [name for name in used if _under(name, whole)]
        identity = len(whole) == 1 and all(_under(name, whole) for name in tensors) and set(inside) <= set(tensors)
        blocks.append(
            Operator(
                kind="block",
                layer=layer,
                module=attention.module,
                group_ids=sorted({*attention.group_ids, *ffn.group_ids}),
                tensors=tensors,
                extra_params=sorted({*attention.extra_params, *ffn.extra_params}),
                replaced={whole[0]: "identity"} if identity else {**attention.replaced, **ffn.replaced},
                num_params=attention.num_params + ffn.num_params,
            )
        )
    return blocks
