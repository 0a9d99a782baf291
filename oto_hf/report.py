"""Compression reports: sizes, FLOPs, widths kept per layer and a latency ratio measured in the same run."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from torch import nn

from .record import PruningRecord
from .stats import count_flops, count_parameters
from .utils import as_args_kwargs, eval_mode


@torch.no_grad()
def measure_latency(model: nn.Module, example_inputs: Any, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time in milliseconds of an eval-mode forward on `example_inputs`."""
    args, kwargs = as_args_kwargs(example_inputs)
    times = []
    with eval_mode(model):
        for index in range(warmup + repeats):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if index >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def dense_reference(pruned: nn.Module) -> nn.Module:
    """The unpruned architecture of `pruned` (its stock class, random weights), for latency and FLOPs.

    The widths come from the unpruned config that `save_pruned` records in `oto_pruning_summary` (a stock config of
    a uniformly pruned model already holds the pruned widths), else from the model's config.
    """
    config = getattr(pruned, "config", None)
    if config is None:
        raise ValueError("dense_reference needs a transformers model with a config; pass the dense model instead.")
    base = type(pruned)
    while getattr(base, "__name__", "").startswith("OTO") and len(base.__mro__) > 2:
        base = base.__mro__[2]  # OTO<Name> derives from (PrunedModelMixin, <Name>)
    record = PruningRecord.from_model_or_config(config)
    if record is not None and record.dense_config:
        values = {k: v for k, v in record.dense_config.items() if k not in ("model_type", "transformers_version")}
        stock = base.config_class(**values)
    else:
        stock = copy.deepcopy(config)
        for key in ("oto_tensor_shapes", "oto_module_attributes"):
            if hasattr(stock, key):
                delattr(stock, key)
    return base(stock).to(next(pruned.parameters()).device).eval()


def compression_report(
    dense: nn.Module, pruned: nn.Module, example_inputs: Any, latency_repeats: int = 20
) -> dict[str, Any]:
    """Parameters, FLOPs and median latency of `dense` and `pruned` on the same inputs, plus kept widths per layer.

    The latency ratio (pruned / dense) is measured here, in one run: the median over interleaved rounds of both.
    """
    record = PruningRecord.from_model_or_config(pruned)
    report: dict[str, Any] = {
        "params_dense": count_parameters(dense),
        "params_pruned": count_parameters(pruned),
        "flops_dense": count_flops(dense, example_inputs),
        "flops_pruned": count_flops(pruned, example_inputs),
    }
    report["params_ratio"] = report["params_pruned"] / report["params_dense"]
    report["flops_ratio"] = report["flops_pruned"] / report["flops_dense"] if report["flops_dense"] else None
    # Interleaved rounds, so that load changes on the machine hit both models alike.
    rounds = [
        (measure_latency(dense, example_inputs, 5), measure_latency(pruned, example_inputs, 5))
        for _ in range(max(1, latency_repeats // 5))
    ]
    report["latency_dense_ms"] = statistics.median(d for d, _ in rounds)
    report["latency_pruned_ms"] = statistics.median(p for _, p in rounds)
    report["latency_ratio"] = statistics.median(p / d for d, p in rounds)
    report["removed_groups"] = record.removed_groups if record is not None else {}
    report["kept_per_layer"] = [layer.to_dict() for layer in record.layers] if record is not None else []
    return report
