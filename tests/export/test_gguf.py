"""The `"gguf"` format: the file read back with `gguf.GGUFReader` holds the pruned model's widths and tensors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import assets
from oto_hf import construct_subnet, discover_groups, save_pruned
from oto_hf.export.gguf import LayerWidths, layer_widths, write_gguf
from tests.utils.tiny_models import TEXT

gguf = pytest.importorskip("gguf")

CORPUS = ["the cat sat on the mat 123", "pruning removes heads and neurons", "only train once gives a smaller model"]
VOCAB = 320
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def byte_level_tokenizer(digits: bool = False) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE trained in-process (SmolLM2's layout: 3 special tokens first)."""
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) if digits else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    fast.pad_token = fast.eos_token
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(**overrides) -> LlamaForCausalLM:
    config = LlamaConfig(
        **{**TEXT, "vocab_size": VOCAB, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 8},
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        **overrides,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def pruned_llama(uniform: bool, **overrides) -> LlamaForCausalLM:
    """Uniform: 2 of the 4 KV groups (2 query heads each) and 5 neurons removed from every layer; else 1 and 3 KV
    groups, 2 and 9 neurons from layers 0 and 1 (chosen at random)."""
    model = tiny_llama(**overrides)
    groups = discover_groups(model)
    removed = {("kv_head", 0): 2 if uniform else 1, ("kv_head", 1): 2 if uniform else 3}
    removed.update({("neuron", 0): 5 if uniform else 2, ("neuron", 1): 5 if uniform else 9})
    generator = torch.Generator().manual_seed(0)
    ids = []
    for family in groups.families().values():
        count = removed.get((family[0].kind, family[0].layer), 0)  # query heads: only with their KV group
        chosen = torch.randperm(len(family), generator=generator)[:count]
        ids += [family[i].id for i in chosen.tolist()]
    return construct_subnet(model, groups, ids)


def read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {t.name: np.asarray(t.data).reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors}
    return fields, tensors


def hf_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order (the inverse of `llama_cpp_rows`)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def assert_tensors_equal(model: LlamaForCausalLM, tensors: dict[str, np.ndarray], dtype=np.float32) -> None:
    """Every weight of `model` is in the file under its llama.cpp name, equal after undoing the q/k row order."""
    widths = layer_widths(model)
    state = model.state_dict()
    expected = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
    }
    for i, width in enumerate(widths):
        names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
        names.update({f"attn_{s}": f"self_attn.{s}_proj" for s in "qkv"})
        names.update({"attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj"})
        names["ffn_down"] = "mlp.down_proj"
        for short, name in names.items():
            for kind in ("weight", "bias"):
                if f"model.layers.{i}.{name}.{kind}" in state:
                    expected[f"blk.{i}.{short}.{kind}"] = state[f"model.layers.{i}.{name}.{kind}"]
        for short, heads in (("attn_q", width.heads), ("attn_k", width.kv_heads)):
            for kind in ("weight", "bias"):
                if f"blk.{i}.{short}.{kind}" in tensors:
                    tensors[f"blk.{i}.{short}.{kind}"] = hf_rows(tensors[f"blk.{i}.{short}.{kind}"], heads)
    assert set(tensors) == set(expected)
    for name, tensor in expected.items():
        want = tensor.numpy().astype(dtype if tensor.ndim > 1 else np.float32)
        assert tensors[name].dtype == want.dtype, name
        np.testing.assert_array_equal(tensors[name], want, err_msg=name)


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "nonuniform"])
def test_widths_and_tensors_read_back(tmp_path, tokenizer, uniform):
    model = pruned_llama(uniform)
    widths = layer_widths(model)
    assert widths == ([LayerWidths(4, 2, 32)] * 2 if uniform else [LayerWidths(6, 3, 35), LayerWidths(2, 1, 28)])
    path = save_pruned(model, tmp_path / "model.gguf", tokenizer, format="gguf")
    assert path == tmp_path / "model.gguf" and [p.name for p in tmp_path.iterdir()] == ["model.gguf"]
    fields, tensors = read(path)
    arch = "llama" if uniform else "deci"
    assert fields["general.architecture"] == arch
    per_layer = {
        "attention.head_count": [w.heads for w in widths],
        "attention.head_count_kv": [w.kv_heads for w in widths],
        "feed_forward_length": [w.ffn for w in widths],
    }
    for key, values in per_layer.items():
        assert fields[f"{arch}.{key}"] == (values[0] if uniform else values), key
    assert fields[f"{arch}.attention.key_length"] == fields[f"{arch}.attention.value_length"] == 8
    assert fields[f"{arch}.rope.dimension_count"] == 8  # head_dim, whatever hidden / heads is (32 / 6 in layer 0)
    assert fields[f"{arch}.rope.freq_base"] == pytest.approx(model.config.rope_parameters["rope_theta"])
    assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(model.config.rms_norm_eps)
    assert fields[f"{arch}.block_count"] == 2 and fields[f"{arch}.embedding_length"] == 32
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert_tensors_equal(model, tensors)


def test_tokenizer_read_back(tmp_path, tokenizer):
    path = save_pruned(pruned_llama(False), tmp_path / "model.gguf", tokenizer, format="gguf")
    fields, _ = read(path)
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == VOCAB
    vocab = tokenizer.get_vocab()
    assert all(tokens[index] == token for token, index in vocab.items())
    assert tokens[len(vocab) :] == [f"[PAD{i}]" for i in range(len(vocab), VOCAB)]
    types = fields["tokenizer.ggml.token_type"]
    assert types[:3] == [gguf.TokenType.CONTROL] * 3 and types[3] == gguf.TokenType.NORMAL
    assert set(types[len(vocab) :]) == {gguf.TokenType.UNUSED}
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [" ".join(m) for m in merges]
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert (fields["tokenizer.ggml.padding_token_id"], fields["tokenizer.ggml.unknown_token_id"]) == (2, 0)
    assert fields["tokenizer.ggml.add_bos_token"] is False and fields["tokenizer.ggml.add_eos_token"] is False
    assert fields["tokenizer.chat_template"] == CHAT_TEMPLATE


def test_digit_splitting_pre_tokenizer_is_smollm(tmp_path):
    path = save_pruned(pruned_llama(True), tmp_path / "model.gguf", byte_level_tokenizer(digits=True), format="gguf")
    assert read(path)[0]["tokenizer.ggml.pre"] == "smollm"


def test_f16_and_biases(tmp_path, tokenizer):
    """f16 matrices (norms and biases stay f32); q/k biases are reordered like their rows."""
    model = pruned_llama(False, attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_()
    path = save_pruned(model, tmp_path / "model.gguf", tokenizer, format="gguf", dtype="f16")
    fields, tensors = read(path)
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert "blk.0.attn_q.bias" in tensors and "blk.1.ffn_down.bias" in tensors
    assert_tensors_equal(model, tensors, dtype=np.float16)


def test_uniform_file_loads_in_transformers_with_the_same_logits(tmp_path, tokenizer):
    """transformers' own GGUF reader (the route `scripts/assets.py` dequantizes SmolLM2 with) gives the same logits."""
    model = pruned_llama(True)
    save_pruned(model, tmp_path / "model.gguf", tokenizer, format="gguf")
    loaded, loaded_tokenizer = assets.load_gguf_model(tmp_path, "model.gguf")
    assert loaded.config.head_dim == 8 and loaded.config.num_attention_heads == layer_widths(model)[0].heads
    ids = tokenizer("the cat sat on the mat", return_tensors="pt")["input_ids"]
    assert loaded_tokenizer("the cat sat on the mat")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def test_an_ffn_without_neurons_is_one_zero_neuron(tmp_path, tokenizer):
    """llama.cpp's deci graph drops a whole layer whose FFN width is 0: an empty FFN is written as one zero neuron."""
    model = tiny_llama()
    groups = discover_groups(model)
    families = list(groups.families().values())
    ids = [g.id for family in families if family[0].kind == "neuron" and family[0].layer == 1 for g in family]
    pruned = construct_subnet(model, groups, ids, allow_empty_layers=True)
    fields, tensors = read(save_pruned(pruned, tmp_path / "model.gguf", tokenizer, format="gguf"))
    assert fields["deci.feed_forward_length"] == [37, 1]
    for name in ("blk.1.ffn_gate.weight", "blk.1.ffn_up.weight"):
        assert tensors[name].shape == (1, 32) and not tensors[name].any()
    assert tensors["blk.1.ffn_down.weight"].shape == (32, 1) and not tensors["blk.1.ffn_down.weight"].any()


def test_refusals(tmp_path, tokenizer):
    model = pruned_llama(False)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        write_gguf(model, tmp_path)
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        write_gguf(model, tmp_path, tokenizer, dtype="q4_0")
    qwen = Qwen2ForCausalLM(Qwen2Config(**{**TEXT, "vocab_size": VOCAB}, num_key_value_heads=2))
    with pytest.raises(ValueError, match="LLaMA causal LMs"):
        write_gguf(qwen, tmp_path, tokenizer)
    small = tiny_llama()
    small.resize_token_embeddings(100)
    with pytest.raises(ValueError, match="does not belong to this model"):
        write_gguf(small, tmp_path, tokenizer)
    odd = copy.deepcopy(tokenizer)
    odd.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="Pass `tokenizer_pre=`"):
        write_gguf(model, tmp_path, odd)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="rope types"):
        write_gguf(
            tiny_llama(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}), tmp_path, tokenizer
        )


def test_rope_scaling(tmp_path, tokenizer):
    """Linear scaling as GGUF keys; Llama 3 scaling as llama.cpp's `rope_freqs` (default over scaled frequencies)."""
    linear = tiny_llama(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 4.0})
    fields, _ = read(save_pruned(linear, tmp_path / "linear.gguf", tokenizer, format="gguf"))
    assert (fields["llama.rope.scaling.type"], fields["llama.rope.scaling.factor"]) == ("linear", 4.0)
    llama3 = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    model = tiny_llama(rope_parameters={**llama3, "original_max_position_embeddings": 8192})
    fields, tensors = read(save_pruned(model, tmp_path / "llama3.gguf", tokenizer, format="gguf"))
    assert "llama.rope.scaling.type" not in fields
    factors = tensors["rope_freqs.weight"]
    assert factors.shape == (4,) and factors[0] == pytest.approx(1.0) and factors[-1] == pytest.approx(8.0)


def test_a_reloaded_oto_llama_folder(tmp_path, tokenizer):
    """A non-uniform model saved as `oto_llama` ("auto") and loaded again writes the same GGUF tensors."""
    model = pruned_llama(False)
    save_pruned(model, tmp_path / "auto")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "auto")
    assert reloaded.config.model_type == "oto_llama" and layer_widths(reloaded) == layer_widths(model)
    fields, tensors = read(save_pruned(reloaded, tmp_path / "model.gguf", tokenizer, format="gguf"))
    assert fields["general.architecture"] == "deci"
    assert_tensors_equal(model, tensors)
