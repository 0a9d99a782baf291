"""Every architecture in transformers' Auto mappings, pruned from a tiny random config: exact, refused or failed.

    python scripts/bench_zoo.py                                  # the whole zoo; writes outputs/zoo.json
    python scripts/bench_zoo.py --only llama phi3 deberta-v2     # a few model types
    python scripts/bench_zoo.py --json /tmp/zoo.json --no-subprocess   # quicker: no reload without oto_hf

For each model type with a main task head (image classification; causal LM for decoders; else sequence
classification; else question answering) the model is built from its config class with shrunk defaults (hidden 32,
2 layers, 4 heads, 2 KV heads, FFN 37, vocab 99) and run through:

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
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from oto_hf import construct_subnet, discover_groups, save_pruned
from oto_hf.stats import forward_outputs

SUBNET_TOLERANCE = 1e-5  # pruned vs zero-masked, relative to the largest output entry (fp32)
RELOAD_TOLERANCE = 1e-6  # reloaded vs pruned
QK_SCALE = 10.0  # near-uniform random attention hides heads mixed by mistake: sharpen it
PER_ARCHITECTURE_SECONDS = 180
MAX_PARAMETERS = 10_000_000  # a "tiny" model above this kept some large default the generic shrinking missed

# (Auto class, mapping) in the order a main task head is chosen.
TASKS = (
    ("AutoModelForImageClassification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
)

# Shrunk config values: a key is set when the config class has it (ints only; lists are shrunk in `_shrink_list`).
TINY = {
    "vocab_size": 99,
    "hidden_size": 32,
    "d_model": 32,
    "n_embd": 32,
    "dim": 32,
    "embed_dim": 32,
    "num_hidden_layers": 2,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 37,
    "decoder_ffn_dim": 37,
    "num_layers": 2,
    "n_layer": 2,
    "n_layers": 2,
    "num_attention_heads": 4,
    "n_head": 4,
    "n_heads": 4,
    "num_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 37,
    "ffn_dim": 37,
    "n_inner": 37,
    "d_ff": 37,
    "moe_intermediate_size": 37,
    "shared_expert_intermediate_size": 37,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "head_dim": 8,
    "rotary_dim": 4,
    "image_size": 64,
    "patch_size": 4,
    "window_size": 2,
    "num_labels": 3,
    "max_position_embeddings": 128,
}
FFN_KEYS = (
    "intermediate_size",
    "ffn_dim",
    "n_inner",
    "d_ff",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
)
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
EXPERT_FFN = 40
# Non-integer choices: BigBird switches from block-sparse to full attention on short inputs anyway, rebuilding its
# attention layers from the config at run time; start in full attention.
TINY_CHOICES = {"attention_type": "original_full"}
# Model types whose Auto entry is only a wrapper around other models (or needs extra inputs).
WRAPPERS = ("encoder-decoder", "vision-encoder-decoder", "speech-encoder-decoder", "timm_wrapper", "auto")


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


class Skip(Exception):
    """The architecture cannot be built or run from a tiny config: not part of the sweep."""


class Refused(Exception):
    """Discovery refused the model with a reason."""


# ---- building -------------------------------------------------------------------------------------------------------
def main_task(model_type: str) -> tuple[str, str] | None:
    """(Auto class, model class name) of the architecture's main task head."""
    masked = modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    for auto_class, mapping_name in TASKS:
        class_name = getattr(modeling_auto, mapping_name).get(model_type)
        if not isinstance(class_name, str):
            continue
        if auto_class == "AutoModelForCausalLM" and model_type in masked:
            continue  # an encoder's LM head: its classification head is the main task
        return auto_class, class_name
    causal = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    return ("AutoModelForCausalLM", causal) if isinstance(causal, str) else None


def zoo_model_types() -> list[str]:
    types = set()
    for _, mapping_name in TASKS:
        types.update(getattr(modeling_auto, mapping_name))
    return sorted(t for t in types if t in CONFIG_MAPPING and t not in WRAPPERS)


def tiny_config(model_type: str) -> Any:
    config_class = CONFIG_MAPPING[model_type]
    try:
        defaults = config_class().to_dict()
    except Exception as error:
        raise Skip(f"default config cannot be built: {type(error).__name__}: {_first_line(error)}") from error
    if getattr(config_class, "sub_configs", None):
        raise Skip(f"composite config ({', '.join(config_class.sub_configs)}): not a single tiny model")
    attribute_map = getattr(config_class, "attribute_map", {}) or {}
    kwargs: dict[str, Any] = {}
    experts = any(key in defaults for key in EXPERT_KEYS)
    for key, value in TINY.items():
        if experts and key in FFN_KEYS:
            value = EXPERT_FFN  # grouped matmuls of experts need 16-byte aligned strides
        present = key in defaults or key in attribute_map
        if present and isinstance(defaults.get(key, 0), (int, type(None))) and not isinstance(defaults.get(key), bool):
            if key in defaults and defaults[key] is None and key not in ("head_dim", "num_key_value_heads"):
                continue
            kwargs[attribute_map.get(key, key) if key not in defaults else key] = value
    kwargs.update({key: value for key, value in TINY_CHOICES.items() if key in defaults})
    for key in ("hidden_sizes", "depths", "num_heads", "embed_dims", "mlp_ratios", "encoder_hidden_sizes"):
        value = defaults.get(key)
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            kwargs[key] = _shrink_list(key, value)
    if "layer_types" in defaults and isinstance(defaults["layer_types"], list):
        kwargs["layer_types"] = None  # derived again from the (smaller) number of layers
    if defaults.get("pad_token_id") is None and "pad_token_id" in defaults:
        kwargs["pad_token_id"] = 0
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        if isinstance(defaults.get(key), int) and defaults[key] >= TINY["vocab_size"]:
            kwargs[key] = 1
    try:
        return config_class(**kwargs)
    except Exception as error:
        raise Skip(f"tiny config rejected: {type(error).__name__}: {_first_line(error)}") from error


def _shrink_list(key: str, value: list[int]) -> list[int]:
    if key in ("hidden_sizes", "embed_dims", "encoder_hidden_sizes"):
        return [8 * 2**i for i in range(len(value))]
    if key == "depths":
        return [1] * len(value)
    if key == "num_heads":
        return [2] * len(value)
    return value


def build(model_type: str) -> tuple[torch.nn.Module, str]:
    """The tiny model with its main task head (fp32, eval, seeded) and the Auto class that loads it."""
    task = main_task(model_type)
    if task is None:
        raise Skip("no task head among image classification, causal LM, sequence classification, QA")
    auto_class, class_name = task
    config = tiny_config(model_type)
    model_class = getattr(transformers, class_name, None)
    if model_class is None:
        raise Skip(f"{class_name} is not importable (optional dependency missing)")
    torch.manual_seed(0)
    try:
        model = model_class(config).float().eval()
    except Exception as error:
        raise Skip(f"{class_name} cannot be built from the tiny config: {type(error).__name__}: {_first_line(error)}")
    size = sum(p.numel() for p in model.parameters())
    if size > MAX_PARAMETERS:
        raise Skip(f"still {size / 1e6:.0f}M parameters after shrinking the usual config keys")
    if getattr(model, "main_input_name", "input_ids") not in ("input_ids", "pixel_values"):
        raise Skip(f"main input {model.main_input_name!r} (only token ids and pixels are generated)")
    return model, auto_class


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
        raise Skip(f"the stock model does not run on generated inputs: {type(error).__name__}: {_first_line(error)}")
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
            f"generate() not checked: the stock model fails: {type(error).__name__}: {_first_line(error)}"
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


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


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
