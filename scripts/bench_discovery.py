"""Time and peak memory of `discover_groups` on a large model built on the meta device (no weights allocated).

    python scripts/bench_discovery.py                    # LLaMA-7B shape (32 layers, 4096 hidden, 11008 FFN)
    python scripts/bench_discovery.py --layers 4         # a quicker look
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from oto_hf import discover_groups


def main(args: argparse.Namespace) -> None:
    config = LlamaConfig(
        hidden_size=args.hidden, intermediate_size=args.ffn, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=32000,
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    groups = discover_groups(model, show_progress=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model: LLaMA shape, {parameters / 1e9:.2f}B parameters on the meta device ({parameters * 2 / 2**30:.1f} GiB in bf16)")
    print(groups.summary().splitlines()[0])
    print(f"discover_groups: {seconds:.1f} s; peak RSS {peak:.0f} MiB (process before the model: {rss_before:.0f} MiB)")
    print(f"all parameters still on meta: {all(p.is_meta for p in model.parameters())}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--ffn", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=32)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
