"""Tiny causal LMs pruned with different widths per layer, for the export formats' tests.

Widths are checked from module shapes, so the tests hold whatever groups `discover_groups` forms (KV groups with
their query heads, or query heads nested in KV groups).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from oto_hf import construct_subnet, discover_groups
from oto_hf.erasing import erase_operators, find_operators
from tests.utils.tiny_models import TEXT

# 8 query heads in 4 KV groups of 2, head_dim 4, FFN 37, 3 layers; a wide init so that greedy tokens vary.
LLM = {**TEXT, "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 4, "initializer_range": 0.2}
# The share of each layer's groups of each kind that is removed (the first ones): layer 0 keeps its heads, layer 1
# loses half of them (query and KV heads alike), layer 2 a quarter; the FFN widths differ too. Widths: (8, 4, 7),
# (4, 2, 18), (6, 3, 36) query heads, KV heads, neurons.
PLAN = {
    0: {"neuron": 30 / 37},
    1: {"head": 0.5, "kv_head": 0.5, "neuron": 19 / 37},
    2: {"head": 0.25, "kv_head": 0.25, "neuron": 1 / 37},
}
PROMPT = [[3, 17, 42, 8, 60]]


def tiny_llm(name: str) -> PreTrainedModel:
    """A tiny random LLaMA (untied), Qwen2 (q/k/v biases, tied embeddings), Qwen3 (QK-norm) or Mistral."""
    torch.manual_seed(0)
    if name == "llama":
        return LlamaForCausalLM(LlamaConfig(**LLM)).eval()
    if name == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(**LLM, head_dim=4)).eval()
    if name == "mistral":
        return MistralForCausalLM(MistralConfig(**LLM, sliding_window=None)).eval()
    model = Qwen2ForCausalLM(Qwen2Config(**LLM, tie_word_embeddings=True)).eval()
    with torch.no_grad():  # Qwen2 initialises its biases to zero; non-zero biases show that they are carried
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.2)
    return model


def pruned_llm(name: str, erase: dict[str, int] | None = None) -> PreTrainedModel:
    """`tiny_llm(name)` with the groups of `PLAN` zeroed and sliced away by `construct_subnet`, then the operators
    in `erase` (kind -> layer, e.g. `{"attention": 0, "block": 1}`) erased by `erase_operators`."""
    model = tiny_llm(name)
    groups = discover_groups(model)
    ids = []
    for layer, kinds in PLAN.items():
        for kind, share in kinds.items():
            members = [group.id for group in groups if group.layer == layer and group.kind == kind]
            ids += members[: round(share * len(members))]
    pruned = construct_subnet(model, groups, ids)
    if not erase:
        return pruned
    operators = find_operators(model, groups, verify=False)
    chosen = [op for op in operators if erase.get(op.kind) == op.layer]
    assert len(chosen) == len(erase)
    return erase_operators(pruned, chosen, groups.example_inputs)


def widths(model: PreTrainedModel) -> list[tuple[int, int, int]]:
    """(query heads, KV heads, FFN neurons) of each layer, from module shapes (of a model without erased parts)."""
    found = []
    for layer in model.model.layers:
        attention, head_dim = layer.self_attn, layer.self_attn.head_dim
        found.append(
            (
                attention.q_proj.out_features // head_dim,
                attention.k_proj.out_features // head_dim,
                layer.mlp.gate_proj.out_features,
            )
        )
    return found


@torch.no_grad()
def slice_attention(model: PreTrainedModel, layer: int, query_heads: list[int], kv_heads: list[int]) -> None:
    """Keep the given heads of one layer (by hand, as a pruning that nests query heads in KV groups may)."""
    attention = model.model.layers[layer].self_attn
    head_dim = attention.head_dim

    def rows(heads: list[int]) -> torch.Tensor:
        return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])

    for name, heads in (("q_proj", query_heads), ("k_proj", kv_heads), ("v_proj", kv_heads)):
        old = getattr(attention, name)
        new = nn.Linear(old.in_features, len(heads) * head_dim, bias=old.bias is not None)
        new.weight.copy_(old.weight[rows(heads)])
        if old.bias is not None:
            new.bias.copy_(old.bias[rows(heads)])
        setattr(attention, name, new)
    old = attention.o_proj
    new = nn.Linear(len(query_heads) * head_dim, old.out_features, bias=old.bias is not None)
    new.weight.copy_(old.weight[:, rows(query_heads)])
    if old.bias is not None:
        new.bias.copy_(old.bias)
    attention.o_proj = new
    attention.num_key_value_groups = len(query_heads) // len(kv_heads)


@torch.no_grad()
def greedy(model: PreTrainedModel, new_tokens: int = 12, use_cache: bool = True) -> list[int]:
    prompt = torch.tensor(PROMPT)
    output = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, use_cache=use_cache, pad_token_id=0)
    return output[0, prompt.shape[1] :].tolist()


@torch.no_grad()
def logits(model: PreTrainedModel) -> torch.Tensor:
    return model(input_ids=torch.tensor(PROMPT), use_cache=False).logits


_LOAD_WITHOUT_OTO_HF = """
import json, sys
sys.modules["oto_hf"] = None  # oto_hf must not be importable here
import torch
from transformers import AutoModelForCausalLM
folder, prompt, new_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor(prompt), use_cache=False).logits
    output = model.generate(torch.tensor(prompt), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
print(json.dumps({"class": type(model).__name__, "tokens": output[0, len(prompt[0]):].tolist(),
                  "logits": logits.tolist()}))
"""


def load_without_oto_hf(folder: Path, modules_cache: Path, new_tokens: int = 12) -> dict[str, Any]:
    """Load `folder` with `AutoModelForCausalLM` in a process that cannot import oto_hf: class, greedy tokens, logits.

    Remote code is copied into `modules_cache` (not the user's cache); stdin is closed, so a question fails.
    """
    env = {**os.environ, "HF_MODULES_CACHE": str(modules_cache), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_OTO_HF, str(folder), json.dumps(PROMPT), str(new_tokens)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        env=env,
    )
    if result.returncode != 0:
        raise AssertionError(f"loading {folder} without oto_hf failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
