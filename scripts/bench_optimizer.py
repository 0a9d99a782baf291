"""Benchmark DHSPG against `torch.optim.AdamW` on BERT-base shapes, and `OTOTrainer` against `Trainer`.

Optimizer steps (fake gradients, the same parameters for every optimizer) are measured interleaved: each round times
one step of every optimizer in turn, and the figure reported is the median over rounds of each per-round ratio, so the
machine's drift hits both sides alike. Measured, each against AdamW with the same settings:

- warm-up, outside the importance window (the plain base step), and inside it (plus the Fisher importance statistics);
- pruning phase (penalty on the redundant groups, the progressive schedule), and the same with family constraints
  (`min_heads_per_layer=1`, `uniform_widths=True`);
- both with `foreach=False` (torch's CPU default) and `foreach=True` (torch's CUDA default); on CUDA also AdamW with
  `fused=True`;
- the bytes of optimizer state kept between steps.

Then a whole training step (forward, backward, optimizer step) of `OTOTrainer` in its pruning phase against
`Trainer` (AdamW) on the same model and batch, interleaved in the same way: with `--saliency` (the default, `"auto"`,
is `"output"` here, whose hooks record activations and output gradients; `"kfac"` records the gradients' second
moments too) and with `"fisher"` (no hooks).

    python scripts/bench_optimizer.py
    python scripts/bench_optimizer.py --rounds 9 --device cuda
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel, Trainer, TrainingArguments

from oto_hf import OTOTrainer, OTOTrainingArguments, discover_groups
from oto_hf.graph.groups import GroupSet, TensorSlice, ZeroInvariantGroup
from oto_hf.optim import DHSPG


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="Device for parameters and optimizer state (cpu or cuda).")
    parser.add_argument("--layers", type=int, default=12, help="Number of BERT layers (12 for BERT-base).")
    parser.add_argument("--rounds", type=int, default=7, help="Interleaved rounds (median over rounds reported).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps of each optimizer before the rounds.")
    parser.add_argument("--target", type=float, default=0.5, help="DHSPG target group sparsity.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU), default: torch's.")
    parser.add_argument("--batch_size", type=int, default=8, help="Batch of the whole-training-step comparison.")
    parser.add_argument("--seq_len", type=int, default=128, help="Sequence length of that comparison.")
    parser.add_argument("--saliency", default="auto", help="dhspg_saliency of the timed OTOTrainer (beside 'fisher').")
    parser.add_argument("--skip_trainer", action="store_true", help="Skip the OTOTrainer / Trainer comparison.")
    return parser


def bert_groups(model: BertModel) -> GroupSet:
    """Head and FFN-neuron groups of a BERT encoder, built from the known layout (fast for any size)."""
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


def timed(step: Callable[[], None], device: torch.device) -> float:
    """Wall time of one call of `step` in seconds (synchronising CUDA around it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved_ratios(
    steps: dict[str, Callable[[], None]],
    baseline: str,
    rounds: int,
    warmup: int,
    device: torch.device,
    before: Callable[[], None] = lambda: None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Median time of each step and median over rounds of its ratio to `baseline`, timing every step once a round
    (`before` runs untimed before each step)."""
    for step in steps.values():
        for _ in range(warmup):
            before()
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            before()
            times[name].append(timed(step, device))
    ratios = {
        name: statistics.median(t / b for t, b in zip(times[name], times[baseline], strict=True)) for name in steps
    }
    return {name: statistics.median(values) for name, values in times.items()}, ratios


def state_nbytes(optimizer: torch.optim.Optimizer) -> int:
    if isinstance(optimizer, DHSPG):
        return optimizer.state_nbytes()
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def optimizer_steps(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = BertModel(BertConfig(num_hidden_layers=args.layers), add_pooling_layer=False).to(device)
    groups = bert_groups(model)
    params = list(model.parameters())
    gradients = [torch.randn_like(p) * 1e-3 for p in params]
    for p, g in zip(params, gradients):
        p.grad = g.clone()

    def reset_gradients() -> None:
        """Every step sees the same gradients (a DHSPG pruning step overwrites them with its directions)."""
        for p, g in zip(params, gradients):
            p.grad.copy_(g)

    print(f"model: {sum(p.numel() for p in params) / 1e6:.1f}M parameters, {len(groups)} groups ({groups.counts()}), "
          f"device {device}, threads {torch.get_num_threads()}")  # fmt: skip

    def dhspg(foreach: bool, **kwargs) -> DHSPG:
        settings = dict(lr=1e-5, weight_decay=0.01, variant="adamw", target_sparsity=args.target, foreach=foreach)
        return DHSPG(params, groups, model.named_parameters(), **{**settings, **kwargs})

    far = 10**9
    results = {}
    modes = [False, True] if device.type == "cpu" else [True]
    for foreach in modes:
        optimizers = {
            "AdamW": torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, foreach=foreach),
            # A second AdamW: its ratio to the first shows the measurement noise.
            "AdamW again (noise)": torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, foreach=foreach),
            # Importance is accumulated only in the last `importance_window` steps before the first partition.
            "warm-up": dhspg(foreach, partition_steps=far, pruning_end_steps=far + 1, importance_window=1),
            "warm-up, importance window": dhspg(foreach, partition_steps=far, pruning_end_steps=far + 1),
            "pruning": dhspg(foreach, partition_steps=0, pruning_end_steps=far),
            "pruning, constrained": dhspg(
                foreach, partition_steps=0, pruning_end_steps=far, min_heads_per_layer=1, uniform_widths=True
            ),
        }
        if device.type == "cuda":
            optimizers["AdamW fused"] = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, fused=True)
        for name in ("pruning", "pruning, constrained"):
            reset_gradients()
            optimizers[name].step()  # the partition step (one-off, reads values back)
        steps = {name: optimizer.step for name, optimizer in optimizers.items()}
        times, ratios = interleaved_ratios(steps, "AdamW", args.rounds, args.warmup, device, reset_gradients)
        adamw_bytes = state_nbytes(optimizers["AdamW"])
        print(f"\nforeach={foreach} ({args.rounds} interleaved rounds; ratio = median of per-round ratios to AdamW)")
        for name in steps:
            line = f"  {name:<28} {times[name] * 1e3:9.1f} ms   ratio {ratios[name]:.3f}x"
            if isinstance(optimizers[name], DHSPG):
                line += f"   state {state_nbytes(optimizers[name]) / adamw_bytes:.4f}x AdamW's"
            print(line)
        pruning = optimizers["pruning"]
        print(f"  pruning phase: {len(pruning.redundant_group_ids())} redundant groups, "
              f"{int((pruning.lambdas > 0).sum())} penalised in the last step")  # fmt: skip
        tag = "foreach" if foreach else "single"
        for name, ratio in ratios.items():
            results[f"{tag}/{name}"] = ratio
        results[f"{tag}/state"] = state_nbytes(pruning) / adamw_bytes
        del optimizers, pruning, steps
        gc.collect()
    return results


def training_steps(args: argparse.Namespace, device: torch.device, output_dir: str) -> float:
    """Median over interleaved rounds of (OTOTrainer step) / (Trainer step), same model, batch and settings."""
    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=args.layers, num_labels=2)
    batch = {
        "input_ids": torch.randint(1000, 20000, (args.batch_size, args.seq_len), device=device),
        "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long, device=device),
        "labels": torch.randint(0, 2, (args.batch_size,), device=device),
    }
    use_cpu = device.type == "cpu"
    common = dict(max_steps=10**6, learning_rate=1e-5, report_to=[], use_cpu=use_cpu, bf16=not use_cpu)
    dense_model = BertForSequenceClassification(config).to(device)
    example = {k: v[:1] for k, v in batch.items() if k != "labels"}
    groups = discover_groups(dense_model, example)
    trainer = Trainer(dense_model, TrainingArguments(output_dir, **common))
    oto_trainers = {}
    # the saliency asked for ("auto": "output" here, with its forward and gradient hooks) and "fisher" (no hooks)
    for saliency in (args.saliency, "fisher"):
        oto_model = BertForSequenceClassification(config).to(device)
        oto_model.load_state_dict(dense_model.state_dict())
        oto_args = OTOTrainingArguments(
            output_dir, **common, target_sparsity=args.target, partition_steps=1, pruning_end_steps=10**6 - 1,
            dhspg_saliency=saliency,
        )  # fmt: skip
        oto_trainers[saliency] = OTOTrainer(oto_model, oto_args, groups=groups, example_inputs=example)
    for each in (trainer, *oto_trainers.values()):
        each.create_optimizer_and_scheduler(num_training_steps=10**6)

    def train_step(each: Trainer) -> Callable[[], None]:
        def run() -> None:
            each.model.train()
            # The loss and backward pass of `Trainer.training_step`, without its gradient-accumulation bookkeeping.
            each.accelerator.backward(each.compute_loss(each.model, batch))
            each.optimizer.step()
            each.optimizer.zero_grad()

        return run

    default = f"OTOTrainer (DHSPG, {oto_trainers[args.saliency].saliency})"
    steps = {
        "Trainer (AdamW)": train_step(trainer),
        default: train_step(oto_trainers[args.saliency]),
        "OTOTrainer (DHSPG, fisher)": train_step(oto_trainers["fisher"]),
    }
    times, ratios = interleaved_ratios(steps, "Trainer (AdamW)", args.rounds, args.warmup, device)
    optimizer = oto_trainers[args.saliency].optimizer
    print(f"\nwhole training step, batch {args.batch_size} x {args.seq_len}, {args.rounds} interleaved rounds "
          f"(OTOTrainer in its {optimizer.phase} phase, {optimizer.num_zero_groups()} zero groups)")  # fmt: skip
    for name in steps:
        print(f"  {name:<32} {times[name] * 1e3:9.1f} ms   ratio {ratios[name]:.3f}x")
    return ratios[default], ratios["OTOTrainer (DHSPG, fisher)"]


def main(args: argparse.Namespace) -> dict[str, float]:
    import tempfile

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = optimizer_steps(args, device)
    if not args.skip_trainer:
        with tempfile.TemporaryDirectory() as output_dir:
            results["trainer_step_ratio"], results["trainer_step_ratio_fisher"] = training_steps(
                args, device, output_dir
            )
    return results


if __name__ == "__main__":
    main(make_parser().parse_args())
