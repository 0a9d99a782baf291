"""Every architecture in transformers' Auto mappings, pruned from a tiny random config: exact, refused or failed.

    python scripts/bench_zoo.py                                  # the whole zoo; writes outputs/zoo.json
    python scripts/bench_zoo.py --only llama phi3 deberta-v2     # a few model types
    python scripts/bench_zoo.py --json /tmp/zoo.json --no-subprocess   # quicker: no reload without oto_hf

For each model type with a main task head (image classification; causal LM for decoders; else sequence
classification; else question answering) the model is built from its config class with shrunk defaults (hidden 32,
2 layers, 4 heads, 2 KV heads, FFN 37, vocab 99; `zoo_models.py` builds them) and run through:

    discover_groups -> zero random non-uniform groups -> construct_subnet -> outputs equal the zero-masked model
    (<= 1e-5, fp32), again with the query/key weights x10 -> save_pruned -> reload with the Auto class (<= 1e-6),
    here and in a subprocess without oto_hf (trust_remote_code=True) -> causal LMs: generate() with the KV cache
    gives the zero-masked model's tokens.

Each architecture ends `exact`, `refused` (discovery's reason) or `failed` (the error). Model types that cannot be
built from a tiny config (multimodal configs, missing optional packages, inputs other than token ids or pixels)
are listed as `skipped` with the reason and are not part of the counts.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from oto_hf import construct_subnet, discover_groups, save_pruned
from oto_hf.stats import forward_outputs
from zoo_models import Skip, build, first_line, zoo_model_types

SUBNET_TOLERANCE = 1e-5  # pruned vs zero-masked, relative to the largest output entry (fp32)
RELOAD_TOLERANCE = 1e-6  # reloaded vs pruned
QK_SCALE = 10.0  # near-uniform random attention hides heads mixed by mistake: sharpen it
PER_ARCHITECTURE_SECONDS = 180


@dataclass
class Result:
    """How one architecture fared."""

    model_type: str
    model_class: str = ""
    auto_class: str = ""
    outcome: str = "skipped"  # exact | refused | failed | skipped
    reason: str = ""
    groups: dict[str, int] = field(default_factory=dict)
    removed: int = 0
    params: tuple[int, int] = (0, 0)
    checks: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Refused(Exception):
    """Discovery refused the model with a reason."""


# ---- checks ---------------------------------------------------------------------------------------------------------
def random_nonuniform_ids(groups: Any, seed: int = 0) -> list[int]:
    """A different number of groups per family (block), never a whole family."""
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for position, members in enumerate(groups.families().values()):
        if len(members) < 2:
            continue
        offset = int(torch.randint(0, len(members) - 1, (1,), generator=generator))
        count = 1 + (position + offset) % (len(members) - 1)
        order = torch.randperm(len(members), generator=generator)[:count]
        chosen += [members[i].id for i in order.tolist()]
    # Query heads nested in KV groups (GQA): a KV group that stays keeps one of its query heads, so no layer's
    # attention is emptied by removing the query heads of one KV group and the other KV groups themselves.
    for parent, children in groups.nests().values():
        if parent is not None and parent.id not in chosen and children and all(c.id in chosen for c in children):
            chosen.remove(children[0].id)
    return sorted(chosen)


def relative_diff(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    if len(reference) != len(outputs):
        raise AssertionError(f"{len(outputs)} output tensors instead of {len(reference)}")
    worst = 0.0
    for ref, out in zip(reference, outputs):
        if ref.shape != out.shape:
            raise AssertionError(f"output shape {tuple(out.shape)} instead of {tuple(ref.shape)}")
        if ref.numel():
            scale = max(1.0, float(ref.abs().max()))
            worst = max(worst, float((ref.float() - out.float()).abs().max()) / scale)
    return worst


QK_NAMES = re.compile(
    r"(^|\.)(q|k|query|key|q_proj|k_proj|qkv|qkv_proj|c_attn|Wqkv|query_key_value|in_proj|wq|wk|"
    r"qk_proj|query_proj|key_proj|to_q|to_k|W_pack|attn\.qkv)\.weight$"
)


@torch.no_grad()
def scale_queries_and_keys(model: torch.nn.Module) -> int:
    """Multiply query/key (and fused qkv) weights by `QK_SCALE`; returns how many tensors were scaled."""
    scaled = 0
    for name, param in model.named_parameters():
        if QK_NAMES.search(name):
            param.mul_(QK_SCALE)
            scaled += 1
    return scaled


def check(result: Result, name: str, value: float, tolerance: float) -> None:
    result.checks[name] = value
    if not value <= tolerance:
        raise AssertionError(f"{name}: {value:.3g} > {tolerance:g}")


def run_architecture(model_type: str, workdir: Path) -> Result:
    """Run the whole pipeline on one architecture; never raises (the outcome says what happened)."""
    result = Result(model_type)
    start = time.perf_counter()
    try:
        with _time_limit(PER_ARCHITECTURE_SECONDS):
            _pipeline(model_type, workdir, result)
        result.outcome = "exact"
    except Skip as error:
        result.outcome, result.reason = "skipped", str(error)
    except Refused as error:
        result.outcome, result.reason = "refused", str(error)
    except Exception as error:  # any other error is a failure of oto_hf on this architecture
        result.outcome = "failed"
        result.reason = f"{type(error).__name__}: {error}"[:2000]
        result.notes.append(traceback.format_exc()[-3000:])
    result.seconds = round(time.perf_counter() - start, 1)
    return result


def _pipeline(model_type: str, workdir: Path, result: Result) -> None:
    model, auto_class = build(model_type)
    result.model_class, result.auto_class = type(model).__name__, auto_class
    try:
        from oto_hf import default_example_inputs

        inputs = default_example_inputs(model)
        forward_outputs(model, inputs)
    except Exception as error:
        raise Skip(f"the stock model does not run on generated inputs: {type(error).__name__}: {first_line(error)}")
    try:
        groups = discover_groups(model, inputs)
    except (ValueError, RuntimeError) as error:
        raise Refused(str(error)) from error
    result.groups = groups.counts()
    ids = random_nonuniform_ids(groups, seed=len(model_type))
    if not ids:  # families of one group only: remove one group somewhere
        ids = [0]
    result.removed = len(ids)
    masked = groups.zero_(copy.deepcopy(model), ids)
    pruned = construct_subnet(model, groups, ids)
    result.params = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in pruned.parameters()))
    check(
        result,
        "subnet",
        relative_diff(forward_outputs(masked, inputs)[0], forward_outputs(pruned, inputs)[0]),
        SUBNET_TOLERANCE,
    )
    sharp_masked, sharp_pruned = copy.deepcopy(masked), copy.deepcopy(pruned)
    if scale_queries_and_keys(sharp_masked) != scale_queries_and_keys(sharp_pruned):
        raise AssertionError("the pruned model has different query/key tensors")
    check(
        result,
        "subnet_qk_x10",
        relative_diff(forward_outputs(sharp_masked, inputs)[0], forward_outputs(sharp_pruned, inputs)[0]),
        SUBNET_TOLERANCE,
    )

    # Not a valid Python name: a folder named like an optional package (`xlstm`) in the working directory would be
    # imported as that package by transformers' availability checks.
    folder = save_pruned(pruned, workdir / f"pruned-{model_type}", overwrite=True)
    expected = forward_outputs(pruned, inputs)[0]
    reloaded = getattr(transformers, auto_class).from_pretrained(folder).eval()
    check(result, "reload", relative_diff(expected, forward_outputs(reloaded, inputs)[0]), RELOAD_TOLERANCE)
    torch.save({"inputs": inputs, "outputs": expected, "auto_class": auto_class}, workdir / f"{model_type}.pt")
    if auto_class == "AutoModelForCausalLM":
        _check_generation(result, masked, pruned, inputs)


@torch.no_grad()
def _check_generation(
    result: Result, masked: torch.nn.Module, pruned: torch.nn.Module, inputs: dict[str, Any]
) -> None:
    """Greedy decoding with the KV cache: the pruned model must produce the zero-masked model's tokens."""
    prompt = inputs["input_ids"][:, :4]
    settings = dict(max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    try:
        expected = masked.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
    except Exception as error:  # the stock model itself cannot generate from this tiny config
        result.notes.append(
            f"generate() not checked: the stock model fails: {type(error).__name__}: {first_line(error)}"
        )
        return
    tokens = pruned.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
    check(result, "generate_tokens_differ", float(not torch.equal(expected, tokens)), 0)


_SUBPROCESS = r"""
import json, sys, torch, transformers
sys.modules["oto_hf"] = None  # oto_hf must not be importable here
torch.set_num_threads(1)
root, names = sys.argv[1], json.loads(sys.argv[2])
found = {}
for name in names:
    try:
        data = torch.load(f"{root}/{name}.pt", weights_only=False)
        auto = getattr(transformers, data["auto_class"])
        model = auto.from_pretrained(f"{root}/pruned-{name}", trust_remote_code=True).float().eval()
        with torch.no_grad():
            out = model(**data["inputs"])
        leaves = [t for t in torch.utils._pytree.tree_leaves(out) if torch.is_tensor(t) and t.is_floating_point()]
        worst = 0.0
        for a, b in zip(leaves, data["outputs"]):
            worst = max(worst, float((a - b).abs().max()) / max(1.0, float(b.abs().max())))
        found[name] = worst if len(leaves) == len(data["outputs"]) else f"{len(leaves)} outputs"
    except Exception as error:
        found[name] = f"{type(error).__name__}: {error}"[:1000]
print(json.dumps(found))
"""


def reload_without_oto_hf(results: list[Result], workdir: Path) -> None:
    """Reload every exact architecture in one subprocess where oto_hf cannot be imported."""
    names = [r.model_type for r in results if r.outcome == "exact"]
    if not names:
        return
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS, str(workdir), json.dumps(names)],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
        timeout=3600,
    )
    if process.returncode != 0:
        found = {name: f"subprocess failed: {process.stderr[-1000:]}" for name in names}
    else:
        found = json.loads(process.stdout.strip().splitlines()[-1])
    for result in results:
        if result.model_type not in found:
            continue
        value = found[result.model_type]
        if isinstance(value, float) and value <= RELOAD_TOLERANCE:
            result.checks["reload_without_oto_hf"] = value
        else:
            result.outcome, result.reason = "failed", f"reload without oto_hf: {value}"


# ---- running and reporting ------------------------------------------------------------------------------------------
def sweep(model_types: list[str], workdir: Path, subprocess_check: bool = True, verbose: bool = True) -> list[Result]:
    results = []
    for model_type in model_types:
        result = run_architecture(model_type, workdir)
        results.append(result)
        if verbose:
            print(
                f"{model_type:32s} {result.outcome:8s} {result.seconds:6.1f}s {_short(result.reason, 110)}", flush=True
            )
    if subprocess_check:
        reload_without_oto_hf(results, workdir)
    return results


def table(results: list[Result]) -> str:
    swept = [r for r in results if r.outcome != "skipped"]
    counts = Counter(r.outcome for r in swept)
    lines = [f"{'model type':28s} {'class':44s} {'outcome':8s} groups / details"]
    for r in swept:
        groups = ", ".join(f"{n} {k}s" for k, n in r.groups.items())
        detail = groups if r.outcome == "exact" else _short(r.reason, 160)
        lines.append(f"{r.model_type:28s} {r.model_class:44s} {r.outcome:8s} {detail}")
    total = len(swept)
    lines.append("")
    outcomes = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("exact", "refused", "failed"))
    lines.append(
        f"{total} architectures: {outcomes}"
        + (f" ({100 * counts.get('exact', 0) / total:.0f}% exact)" if total else "")
    )
    skipped = len(results) - total
    if skipped:
        lines.append(f"{skipped} model types skipped (cannot be built or run from a tiny config; see the JSON)")
    return "\n".join(lines)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def main(args: argparse.Namespace) -> list[Result]:
    torch.set_num_threads(1)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model_types = args.only or zoo_model_types()
    with tempfile.TemporaryDirectory(prefix="oto_zoo_") as tmp:
        results = sweep(model_types, Path(tmp), subprocess_check=not args.no_subprocess)
    print()
    print(table(results))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "counts": dict(Counter(r.outcome for r in results)),
            "results": [asdict(r) for r in results],
        }
        path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        print(f"\nwrote {path}")
    return results


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="model types to run (default: the whole zoo)")
    parser.add_argument("--json", default="outputs/zoo.json", help="where to write the results ('' to skip)")
    parser.add_argument("--no-subprocess", action="store_true", help="skip the reload in a process without oto_hf")
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
