"""erase_operators: erased attention sub-blocks, FFN sub-blocks and whole blocks compute what the zero-masked model
computes, after narrowing too; they reload with the Auto classes (and without oto_hf); generate() with the KV cache."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from torch import nn

from oto_hf import SubnetMismatchError, construct_subnet, count_parameters, discover_groups, save_pruned
from oto_hf.erasing import erase_operators, find_operators
from oto_hf.models.no_op import ERASED_KEY, ErasedModule
from tests.utils.asserts import assert_save_load_roundtrip, masked_copy, max_output_diff, random_nonuniform_ids
from tests.utils.operators import found_operators
from tests.utils.tiny_models import CASES

KINDS = ("attention", "ffn", "block")


# The kinds each architecture has (test_operators.py checks the counts): ALBERT's shared layer and ConvNeXt's layer
# scale leave them without operators; the conv branches of ResNet and MobileNetV2 are "ffn" operators.
NO_OPERATORS = {"albert", "convnext"}
BRANCH_ONLY = {"resnet", "mobilenet_v2"}
ERASE_CASES = [
    pytest.param(case, kind, id=f"{case.name}-{kind}")
    for case in CASES
    if case.name not in NO_OPERATORS
    for kind in (("ffn",) if case.name in BRANCH_ONLY else KINDS)
]


@pytest.mark.parametrize(("case", "kind"), ERASE_CASES)
def test_erased_model_equals_the_zero_masked_model_and_reloads(case, kind, tmp_path):
    """Narrow the other families non-uniformly, then erase the last operator of `kind`: the result has the operator's
    (narrowed) parameters fewer, equals the model with both the groups and the operator's tensors at zero, and
    reloads with the Auto class (the config lists the erased modules)."""
    found = found_operators(case.name)
    op = [op for op in found.operators if op.kind == kind][-1]
    members = set(op.group_ids)
    ids = [i for i in random_nonuniform_ids(found.groups, seed=3) if i not in members]
    narrowed = construct_subnet(found.model, found.groups, ids) if ids else copy.deepcopy(found.model)
    erased = erase_operators(narrowed, [op], found.groups.example_inputs)
    own = sum(p.numel() for name, p in narrowed.named_parameters() if name in op.tensors)  # narrowed, if a group
    assert count_parameters(erased) == count_parameters(narrowed) - own < count_parameters(narrowed)  # straddles it
    assert all(isinstance(dict(erased.named_modules())[path], ErasedModule) for path in op.replaced)
    reference = op.zero_(masked_copy(found.model, found.groups, ids))
    assert max_output_diff(erased, reference, found.groups.example_inputs) <= 1e-5
    entries = getattr(erased.config, ERASED_KEY)
    assert [(entry["layer"], entry["kind"]) for entry in entries] == [(op.layer, kind)]
    loaded = assert_save_load_roundtrip(erased, tmp_path / "erased", auto_class=case.auto_class)
    assert count_parameters(loaded) == count_parameters(erased)


def test_overlapping_or_foreign_operators_are_refused():
    found = found_operators("llama")
    block = next(op for op in found.operators if op.kind == "block" and op.layer == 0)
    attention = next(op for op in found.operators if op.kind == "attention" and op.layer == 0)
    with pytest.raises(ValueError, match="erase a block or its parts, not both"):
        erase_operators(found.model, [block, attention])
    erased = erase_operators(found.model, [block])
    with pytest.raises(ValueError, match="has no module 'model.layers.0"):
        erase_operators(erased, [attention])


def test_erasing_a_model_as_it_is_after_its_groups_went_to_zero():
    """`zero_first=False`, as after training: LLaMA's attention with its heads at zero adds nothing (its input norm
    does not matter), so erasing it keeps the model's outputs; BERT's FFN with its neurons at zero still adds its
    output bias, so erasing it would change the model, and the error names the bias."""
    found = found_operators("llama")
    attention = next(op for op in found.operators if op.kind == "attention" and op.layer == 1)
    trained = found.groups.zero_(copy.deepcopy(found.model), attention.group_ids)
    erased = erase_operators(trained, [attention], zero_first=False)
    assert max_output_diff(erased, trained, found.groups.example_inputs) <= 1e-6

    found = found_operators("bert")
    ffn = next(op for op in found.operators if op.kind == "ffn" and op.layer == 0)
    trained = found.groups.zero_(copy.deepcopy(found.model), ffn.group_ids)
    erase_operators(trained, [ffn], zero_first=False)  # the bias is zero as initialised: exact
    with torch.no_grad():
        bias = trained.bert.encoder.layer[0].output.dense.bias
        bias.copy_(torch.linspace(-0.5, 0.5, len(bias)))  # as training leaves it (not uniform: LayerNorm follows)
    with pytest.raises(SubnetMismatchError, match=r"not zero: bert\.encoder\.layer\.0\.output\.dense\.bias\."):
        erase_operators(trained, [ffn], zero_first=False)


def _llama_without_attention(layer: int) -> tuple[nn.Module, nn.Module]:
    """The tiny LLaMA with the attention of `layer` erased, and the same model with that attention zero-masked."""
    found = found_operators("llama")
    op = next(op for op in found.operators if op.kind == "attention" and op.layer == layer)
    return erase_operators(found.model, [op]), op.zero_(copy.deepcopy(found.model))


def test_generate_with_layer_0_attention_erased_gives_the_zero_masked_tokens(tmp_path):
    """transformers reads the cache's length from layer 0 (`DynamicCache.get_seq_length`): with layer 0's attention
    erased, the placeholder it writes (one byte per token for keys, one for values) keeps positions and masks right.
    Greedy tokens equal the zero-masked model's, before and after a save and reload."""
    erased, masked = _llama_without_attention(0)
    prompt = torch.tensor([[1, 5, 7, 3, 9], [2, 8, 8, 4, 6]])
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    expected = masked.generate(prompt, **settings)
    output = erased.generate(prompt, **settings, return_dict_in_generate=True)
    assert torch.equal(output.sequences, expected)
    cache = output.past_key_values
    assert cache.get_seq_length() == expected.shape[1] - 1  # the last token is not fed back
    assert cache.layers[0].keys.dtype == torch.bool and cache.layers[0].keys.shape[1::2] == (1, 1)
    assert cache.layers[1].keys.shape[1] == 2  # the layer that kept its attention caches its 2 KV heads
    loaded = transformers.AutoModelForCausalLM.from_pretrained(save_pruned(erased, tmp_path / "erased"))
    assert torch.equal(loaded.generate(prompt, **settings), expected)


CAUSAL_LMS = [case.name for case in CASES if case.auto_class == "AutoModelForCausalLM"]


@pytest.mark.parametrize("kind", ["attention", "block"])
@pytest.mark.parametrize("name", CAUSAL_LMS)
def test_every_causal_lm_generates_with_layer_0_erased(name, kind):
    """Layer 0's attention (or the whole layer) erased: the zero-masked model's greedy tokens, and a cache that counts
    every token, whether the cache reaches the stand-in by keyword or by position (GPT-2's blocks)."""
    found = found_operators(name)
    op = next(op for op in found.operators if op.kind == kind and op.layer == 0)
    prompt = torch.tensor([[1, 5, 7, 3, 9], [2, 8, 8, 4, 6]])
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))
    expected = op.zero_(copy.deepcopy(found.model)).generate(prompt, **settings)
    output = erase_operators(found.model, [op]).generate(prompt, **settings, return_dict_in_generate=True)
    assert torch.equal(output.sequences, expected)
    assert output.past_key_values.get_seq_length() == expected.shape[1] - 1


_WITHOUT_OTO_HF = r"""
import json, sys, torch, transformers
sys.modules["oto_hf"] = None  # oto_hf must not be importable here
folder = sys.argv[1]
model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
prompt = torch.tensor([[1, 5, 7, 3, 9]])
tokens = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
print(json.dumps({"tokens": tokens.tolist(), "class": type(model).__name__}))
"""


def test_erased_folder_loads_without_oto_hf(tmp_path):
    """The folder's remote code (the pruned classes and the stand-ins, `no_op.py`) is all `trust_remote_code` needs."""
    erased, masked = _llama_without_attention(1)
    folder = save_pruned(erased, tmp_path / "erased")
    assert (folder / "no_op.py").exists()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OTO_HF, str(folder)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    expected = masked.generate(torch.tensor([[1, 5, 7, 3, 9]]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert loaded == {"tokens": expected.tolist(), "class": "OTOLlamaForCausalLM"}


@pytest.mark.slow
def test_smollm2_with_erased_sub_blocks_generates_the_zero_masked_tokens(tmp_path):
    """The real SmolLM2-135M (`OTO_HF_CACHE`): 30 attention, 30 FFN and 30 block operators (the blocks are whole
    decoder layers); layer 0's and layer 7's attention, layer 3's FFN and layer 20 as a whole erased give the greedy
    tokens of the zero-masked model, before and after a save and reload."""
    import assets

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    folder = assets.fetch_smollm2()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    groups = discover_groups(model, dict(tokenizer("The capital of Italy is", return_tensors="pt")), probe=False)
    operators = find_operators(model, groups)
    assert {kind: sum(op.kind == kind for op in operators) for kind in KINDS} == {kind: 30 for kind in KINDS}
    chosen = [
        next(op for op in operators if (op.kind, op.layer) == wanted)
        for wanted in (("attention", 0), ("attention", 7), ("ffn", 3), ("block", 20))
    ]
    assert chosen[0].kv_cache_bytes_per_token == 2 * 3 * 64 * 4  # 3 KV heads of 64, float32
    assert chosen[3].replaced == {"model.layers.20": "identity"}
    erased = erase_operators(model, chosen, groups.example_inputs)
    masked = copy.deepcopy(model)
    for op in chosen:
        op.zero_(masked)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(save_pruned(erased, tmp_path / "erased"))
    for prompt in ("The capital of Italy is", "def fibonacci(n):"):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        expected = masked.generate(ids, max_new_tokens=16, do_sample=False)
        assert torch.equal(erased.generate(ids, max_new_tokens=16, do_sample=False), expected)
        assert torch.equal(loaded.generate(ids, max_new_tokens=16, do_sample=False), expected)


def test_the_pruning_record_tells_what_was_erased():
    """After narrowing then erasing layer 0's FFN: that family keeps no neuron in the record, the other families keep
    what narrowing left, no recorded shape names an erased tensor, and the sizes are those of the whole pruning.
    Erasing layer 1 as a whole then empties its query heads, KV heads and neurons."""
    found = found_operators("llama")
    ffn = next(op for op in found.operators if op.kind == "ffn" and op.layer == 0)
    ids = [i for i in random_nonuniform_ids(found.groups, seed=3) if i not in set(ffn.group_ids)]
    narrowed = construct_subnet(found.model, found.groups, ids)
    erased = erase_operators(narrowed, [ffn])
    record, before = erased.oto_pruning, narrowed.oto_pruning
    kept = {(w.kind, w.layer): w.kept for w in record.layers}
    assert kept == {**{(w.kind, w.layer): w.kept for w in before.layers}, ("neuron", 0): 0}
    assert not any(name.startswith("model.layers.0.mlp.") for name in record.tensor_shapes)
    assert record.params_before == before.params_before == count_parameters(found.model)
    assert record.params_after == count_parameters(erased) < before.params_after
    block = next(op for op in found.operators if op.kind == "block" and op.layer == 1)
    kept = {(w.kind, w.layer): w.kept for w in erase_operators(erased, [block]).oto_pruning.layers}
    assert {kind: kept[(kind, 1)] for kind in ("head", "kv_head", "neuron")} == {"head": 0, "kv_head": 0, "neuron": 0}
