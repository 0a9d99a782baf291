"""Time and peak memory of `discover_groups` on large LLaMA shapes built on the meta device (no weights allocated).

Each shape runs in a fresh process, so its peak RSS is its own.

    python scripts/bench_discovery.py                    # LLaMA-7B and LLaMA-70B shapes
    python scripts/bench_discovery.py --shapes 7b        # one shape
    python scripts/bench_discovery.py --shapes 7b --layers 4   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from oto_hf import discover_groups

SHAPES: dict[str, dict[str, int]] = {
    "7b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
               num_key_value_heads=32),
    "70b": dict(num_hidden_layers=80, hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                num_key_value_heads=8),
}  # fmt: skip


def measure(shape: str, layers: int | None) -> dict[str, float | int | bool]:
    """Discover the groups of one shape in this process; return the figures."""
    values = dict(SHAPES[shape], vocab_size=32000)
    if layers:
        values["num_hidden_layers"] = layers
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**values))
    start = time.perf_counter()
    groups = discover_groups(model, show_progress=False)
    seconds = time.perf_counter() - start
    return {
        "shape": shape,
        "layers": values["num_hidden_layers"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "groups": len(groups),
        "counts": groups.counts(),
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": rss_before,
        "still_meta": all(p.is_meta for p in model.parameters()),
    }


def main(args: argparse.Namespace) -> list[dict]:
    if args.single:
        print(json.dumps(measure(args.shapes[0], args.layers)))
        return []
    results = []
    for shape in args.shapes:
        command = [sys.executable, __file__, "--single", "--shapes", shape]
        if args.layers:
            command += ["--layers", str(args.layers)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(result)
        size = result["parameters"]
        print(f"LLaMA-{shape} shape ({result['layers']} layers): {size / 1e9:.2f}B parameters on meta "
              f"({size * 2 / 2**30:.0f} GiB in bf16); {result['groups']:,} groups {result['counts']}")  # fmt: skip
        print(f"  discover_groups: {result['seconds']:.1f} s; peak RSS {result['peak_rss_mib']:,.0f} MiB (process "
              f"before the model: {result['rss_before_mib']:,.0f} MiB); all parameters still on meta: "
              f"{result['still_meta']}")  # fmt: skip
    return results


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["7b", "70b"])
    parser.add_argument("--layers", type=int, default=None, help="Override the number of layers (a quicker look).")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # one shape, JSON out
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
