"""Benchmark DHSPG against `torch.optim.AdamW` on BERT-base-sized parameters with fake gradients.

Measures, in one run, the median step time of DHSPG (AdamW variant) before the partition step (warm-up) and after it
(pruning phase, penalty active on the redundant groups), each relative to `torch.optim.AdamW`, and the bytes of
optimizer state kept between steps (the default progressive schedule, with Fisher importance accumulated in every
measured step). A second pruning-phase measurement adds the family constraints (`min_kept_per_family={"head": 1}`,
`uniform_widths=True`).

    python scripts/bench_optimizer.py
    python scripts/bench_optimizer.py --repeats 9 --device cuda
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import torch
from transformers import BertConfig, BertModel

from oto_hf.graph.groups import GroupSet, TensorSlice, ZeroInvariantGroup
from oto_hf.optim import DHSPG


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="Device for parameters and optimizer state (cpu or cuda).")
    parser.add_argument("--layers", type=int, default=12, help="Number of BERT layers (12 for BERT-base).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps before each measurement.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed steps per measurement (median reported).")
    parser.add_argument("--target", type=float, default=0.5, help="DHSPG target group sparsity.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU), default: torch's.")
    parser.add_argument(
        "--skip_constrained", action="store_true", help="Skip the pruning-phase measurement with family constraints."
    )
    return parser


def bert_groups(model: BertModel) -> GroupSet:
    """Head and FFN-neuron groups of a BERT encoder, built from the known layout."""
    config = model.config
    size = config.hidden_size // config.num_attention_heads
    groups = []
    for layer in range(config.num_hidden_layers):
        p = f"encoder.layer.{layer}."
        for head in range(config.num_attention_heads):
            idx = torch.arange(head * size, (head + 1) * size)
            slices = [
                TensorSlice(f"{p}attention.self.{m}.{w}", 0, idx)
                for m in ("query", "key", "value")
                for w in ("weight", "bias")
            ]
            slices.append(TensorSlice(f"{p}attention.output.dense.weight", 1, idx))
            num_params = 3 * size * (config.hidden_size + 1) + size * config.hidden_size
            groups.append(ZeroInvariantGroup(len(groups), "head", layer, p[:-1], slices, num_params=num_params))
        for neuron in range(config.intermediate_size):
            idx = torch.tensor([neuron])
            slices = [
                TensorSlice(f"{p}intermediate.dense.weight", 0, idx),
                TensorSlice(f"{p}intermediate.dense.bias", 0, idx),
                TensorSlice(f"{p}output.dense.weight", 1, idx),
            ]
            groups.append(
                ZeroInvariantGroup(len(groups), "neuron", layer, p[:-1], slices, num_params=2 * config.hidden_size + 1)
            )
    return GroupSet(groups)


def time_steps(step: Callable[[], None], warmup: int, repeats: int, device: torch.device) -> float:
    """Median wall time of `step` in seconds."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def adamw_state_nbytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def peak_step_bytes(step: Callable[[], None], device: torch.device) -> int | None:
    """Peak memory allocated above the starting point during one step (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def main(args: argparse.Namespace) -> dict[str, float]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = BertModel(BertConfig(num_hidden_layers=args.layers), add_pooling_layer=False).to(device)
    groups = bert_groups(model)
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    num_params = sum(p.numel() for p in params)
    print(f"model: {num_params / 1e6:.1f}M parameters, {len(groups)} groups ({groups.counts()}), device {device}, "
          f"threads {torch.get_num_threads()}")  # fmt: skip

    reference = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
    adamw_time = time_steps(reference.step, args.warmup, args.repeats, device)
    adamw_bytes = adamw_state_nbytes(reference)
    adamw_peak = peak_step_bytes(reference.step, device)
    del reference
    gc.collect()

    warmup_steps = args.warmup + args.repeats
    start = time.perf_counter()
    optimizer = DHSPG(
        params, groups, model.named_parameters(), lr=1e-5, weight_decay=0.01, variant="adamw",
        target_sparsity=args.target, partition_step=warmup_steps, pruning_end=10**9,
    )  # fmt: skip
    build_time = time.perf_counter() - start
    dhspg_warmup = time_steps(optimizer.step, args.warmup, args.repeats, device)
    if optimizer.phase != "pruning":
        raise RuntimeError(f"expected the pruning phase after {warmup_steps} steps, got {optimizer.phase!r}")
    partition_time = time_steps(optimizer.step, 0, 1, device)
    dhspg_pruning = time_steps(optimizer.step, args.warmup, args.repeats, device)
    dhspg_peak = peak_step_bytes(optimizer.step, device)
    penalised = int((optimizer.lambdas > 0).sum())
    dhspg_bytes = optimizer.state_nbytes()

    print(f"DHSPG construction: {build_time:.2f} s; partition step (one-off, syncs): {partition_time * 1e3:.1f} ms")
    print(f"redundant groups: {len(optimizer.redundant_group_ids())}, penalised in the last step: {penalised}, "
          f"zero: {optimizer.num_zero_groups()}")  # fmt: skip
    print(f"AdamW step:                 {adamw_time * 1e3:9.1f} ms")
    print(f"DHSPG step, warm-up:        {dhspg_warmup * 1e3:9.1f} ms   ratio {dhspg_warmup / adamw_time:.2f}x")
    print(f"DHSPG step, pruning phase:  {dhspg_pruning * 1e3:9.1f} ms   ratio {dhspg_pruning / adamw_time:.2f}x")
    named = dict(model.named_parameters())
    grouped = {id(named[s.name]): named[s.name] for g in groups for s in g.slices}.values()
    transient = sum(p.numel() * p.element_size() for p in grouped)
    print(f"AdamW state:  {adamw_bytes / 2**20:9.1f} MiB")
    print(f"DHSPG state:  {dhspg_bytes / 2**20:9.1f} MiB   ratio {dhspg_bytes / adamw_bytes:.4f}x "
          "(moments, per-group state and group index)")  # fmt: skip
    print(f"DHSPG pruning step also holds the directions of the grouped parameters until the step ends: "
          f"{transient / 2**20:.1f} MiB transient ({transient / adamw_bytes:.2f}x AdamW state)")  # fmt: skip
    if adamw_peak is not None and dhspg_peak is not None:
        print(
            f"peak extra memory in one step: AdamW {adamw_peak / 2**20:.1f} MiB, "
            f"DHSPG pruning {dhspg_peak / 2**20:.1f} MiB"
        )
    constrained_pruning = None
    if not args.skip_constrained:
        del optimizer
        gc.collect()
        constrained = DHSPG(
            params, groups, model.named_parameters(), lr=1e-5, weight_decay=0.01, variant="adamw",
            target_sparsity=args.target, partition_step=0, pruning_end=10**9,
            min_kept_per_family={"head": 1}, uniform_widths=True,
        )  # fmt: skip
        constrained.step()  # the partition step
        constrained_pruning = time_steps(constrained.step, args.warmup, args.repeats, device)
        print(f"DHSPG step, pruning phase with min_kept_per_family and uniform_widths: "
              f"{constrained_pruning * 1e3:.1f} ms   ratio {constrained_pruning / adamw_time:.2f}x "
              f"(target {constrained.target_num_zero_groups} zero groups)")  # fmt: skip
        del constrained
        gc.collect()
    return {
        "adamw_step_s": adamw_time,
        "warmup_ratio": dhspg_warmup / adamw_time,
        "pruning_ratio": dhspg_pruning / adamw_time,
        "state_ratio": dhspg_bytes / adamw_bytes,
        "constrained_pruning_ratio": None if constrained_pruning is None else constrained_pruning / adamw_time,
    }


if __name__ == "__main__":
    main(make_parser().parse_args())
