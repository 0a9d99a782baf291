"""save_pruned -> AutoModel*.from_pretrained in a process where oto_hf cannot be imported, stock configs for uniform
widths, tokenizers, refusals and broken folders (the reload of every architecture with oto_hf imported is checked in
test_architectures.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, BertConfig, BertForQuestionAnswering, LlamaConfig, LlamaForCausalLM

from oto_hf import construct_subnet, discover_groups, save_pruned
from oto_hf.stats import forward_outputs
from tests.utils.asserts import assert_save_load_roundtrip, random_nonuniform_ids
from tests.utils.tiny_models import CASES, TEXT
from tests.utils.tokenizers import tiny_wordpiece_tokenizer


def _outputs(model, inputs):
    return forward_outputs(model, inputs)[0]


def _uniform_ids(groups, per_family: int = 1):
    """Remove the same number of groups from every family (layer x kind)."""
    return sorted(group.id for family in groups.families().values() for group in family[:per_family])


def _save_with_expected_outputs(pruned, groups, folder):
    """`save_pruned` into `folder`; the example inputs and outputs go next to it (`<folder>.pt`) for the subprocess."""
    save_pruned(pruned, folder)
    torch.save({"inputs": groups.example_inputs, "outputs": _outputs(pruned, groups.example_inputs)}, f"{folder}.pt")
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every architecture pruned non-uniformly and saved as `oto_<model_type>`."""
    root = tmp_path_factory.mktemp("pruned")
    results = {}
    for case in CASES:
        torch.manual_seed(0)
        model = case.build().eval()
        groups = discover_groups(model)
        pruned = construct_subnet(model, groups, random_nonuniform_ids(groups, seed=3))
        results[case.name] = (model, pruned, groups, _save_with_expected_outputs(pruned, groups, root / case.name))
    return results


# Uniform widths: (model, `prune_kinds`, groups removed per family, Auto class); saved with the stock config.
UNIFORM = {
    "llama": (lambda: LlamaForCausalLM(LlamaConfig(**TEXT, num_key_value_heads=2)), None, 1, "AutoModelForCausalLM"),
    "qwen2": (
        lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TEXT, num_key_value_heads=2)),
        None,
        1,
        "AutoModelForCausalLM",
    ),
    "bert-ffn": (lambda: BertForQuestionAnswering(BertConfig(**TEXT)), ["neuron"], 5, "AutoModelForQuestionAnswering"),
}


@pytest.fixture(scope="module")
def saved_uniform(tmp_path_factory):
    """Each `UNIFORM` model pruned to the same width in every layer and saved: name -> (its config.json, folder)."""
    root = tmp_path_factory.mktemp("uniform")
    results = {}
    for name, (build, kinds, per_family, _) in UNIFORM.items():
        torch.manual_seed(0)
        model = build().eval()
        groups = discover_groups(model, prune_kinds=kinds)
        pruned = construct_subnet(model, groups, _uniform_ids(groups, per_family=per_family))
        folder = _save_with_expected_outputs(pruned, groups, root / name)
        results[name] = (json.loads((folder / "config.json").read_text()), folder)
    return results


def test_base_auto_model_loads_a_task_checkpoint(saved):
    _, pruned, groups, folder = saved["bert"]
    base = transformers.AutoModel.from_pretrained(folder)
    assert type(base).__name__ == "OTOBertModel"
    layer = base.encoder.layer[0].attention.self
    assert layer.query.weight.shape == pruned.bert.encoder.layer[0].attention.self.query.weight.shape


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_uniform_gqa_pruning_writes_the_stock_config(name, saved_uniform):
    config, folder = saved_uniform[name]
    assert config["model_type"] == name
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 1)
    assert (config["head_dim"], config["intermediate_size"]) == (8, 36)
    assert not list(folder.glob("modeling_oto_*.py"))


def test_one_query_head_per_kv_group_removed_everywhere_writes_the_stock_config(tmp_path):
    """Query heads removed evenly, KV groups all kept: the KV-head count stays, only the query heads shrink."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TEXT, num_key_value_heads=2)).eval()
    groups = discover_groups(model, prune_kinds=["head"])
    first_heads = [children[0].id for _, children in groups.nests().values()]  # one per KV group, every layer
    folder = _save_with_expected_outputs(construct_subnet(model, groups, first_heads), groups, tmp_path / "llama")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 2)
    assert not list(folder.glob("modeling_oto_*.py"))


def test_uniform_ffn_pruning_of_bert_writes_the_stock_config(saved_uniform):
    config, _ = saved_uniform["bert-ffn"]
    assert (config["model_type"], config["intermediate_size"]) == ("bert", 32)


def _run_without_oto_hf(code: str, args: list[str], cwd: Path) -> tuple[Any, str]:
    """Run `code` (which blocks `import oto_hf`) in a fresh process whose stdin is closed, so a question gets EOF at
    once; returns the JSON of its last output line and all of its output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout + result.stderr


_SUBPROCESS = r"""
import json, sys, torch, transformers
sys.modules["oto_hf"] = None  # oto_hf must not be importable here
worst = {}
for folder, auto_class, trust_remote_code in json.loads(sys.argv[1]):
    data = torch.load(f"{folder}.pt", weights_only=False)
    model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=trust_remote_code).eval()
    with torch.no_grad():
        out = model(**data["inputs"])
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if torch.is_tensor(t) and t.is_floating_point()]
    worst[folder] = max(float((a - b).abs().max()) for a, b in zip(leaves, data["outputs"]))
print(json.dumps(worst))
"""


def test_reload_in_a_process_without_oto_hf(saved, saved_uniform, tmp_path):
    """One process that cannot import oto_hf loads every saved folder: the `oto_*` ones through their remote code,
    the stock ones without it."""
    folders = [(str(saved[case.name][3]), case.auto_class, True) for case in CASES]
    folders += [(str(saved_uniform[name][1]), auto_class, False) for name, (*_, auto_class) in UNIFORM.items()]
    worst, _ = _run_without_oto_hf(_SUBPROCESS, [json.dumps(folders)], tmp_path)
    assert set(worst) == {folder for folder, _, _ in folders}
    assert all(diff <= 1e-6 for diff in worst.values()), worst


def test_unpruned_model_saves_stock_config(tmp_path):
    model = BertForQuestionAnswering(BertConfig(**TEXT))
    folder = save_pruned(model, tmp_path / "dense")
    assert AutoConfig.from_pretrained(folder).model_type == "bert"


def test_tokenizer_is_saved_alongside(tmp_path):
    model = BertForQuestionAnswering(BertConfig(**TEXT)).eval()
    groups = discover_groups(model)
    pruned = construct_subnet(model, groups, [0, 20])
    tokenizer = tiny_wordpiece_tokenizer()
    folder = save_pruned(pruned, tmp_path / "out", tokenizer=tokenizer)
    reloaded = AutoTokenizer.from_pretrained(folder)
    assert reloaded("the cat sat")["input_ids"] == tokenizer("the cat sat")["input_ids"]


_TOKENIZER_WITHOUT_OTO_HF = r"""
import json, sys, transformers
sys.modules["oto_hf"] = None  # oto_hf must not be importable here
folder, kwargs = sys.argv[1], json.loads(sys.argv[2])
tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
model = transformers.AutoModelForQuestionAnswering.from_pretrained(folder, trust_remote_code=True)
print()  # after a question, which ends without a newline
print(json.dumps({"ids": tokenizer("the cat sat")["input_ids"], "model": type(model).__name__}))
"""


@pytest.fixture(scope="module")
def oto_folder_with_tokenizer(tmp_path_factory):
    """A BERT pruned non-uniformly (`oto_bert` config, remote code) saved with its tokenizer."""
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**TEXT)).eval()
    groups = discover_groups(model)
    pruned = construct_subnet(model, groups, random_nonuniform_ids(groups, seed=3))
    tokenizer = tiny_wordpiece_tokenizer()
    return save_pruned(pruned, tmp_path_factory.mktemp("tokenizer") / "oto", tokenizer=tokenizer), tokenizer


def _load_without_oto_hf(folder, tmp_path, **kwargs) -> tuple[dict, str]:
    """Tokenizer and model loaded in a process that cannot import oto_hf."""
    return _run_without_oto_hf(_TOKENIZER_WITHOUT_OTO_HF, [str(folder), json.dumps(kwargs)], tmp_path)


def test_the_tokenizer_of_an_oto_folder_loads_without_oto_hf(oto_folder_with_tokenizer, tmp_path):
    """As the model card shows it: `trust_remote_code=True` for the tokenizer too, and no question is asked."""
    folder, tokenizer = oto_folder_with_tokenizer
    loaded, output = _load_without_oto_hf(folder, tmp_path, trust_remote_code=True)
    assert loaded == {"ids": tokenizer("the cat sat")["input_ids"], "model": "OTOBertForQuestionAnswering"}
    assert "custom code" not in output


@pytest.mark.xfail(
    strict=True,
    reason="transformers 5.25 `AutoTokenizer.from_pretrained` first calls `AutoConfig.from_pretrained` with "
    "`trust_remote_code=None`, which asks about the `auto_map['AutoConfig']` of any config type it does not know "
    "(the `oto_*` ones, needed for `trust_remote_code=True` and for oto_hf's own loading); nothing in the saved files "
    "avoids it. It answers EOF here, the tokenizer still loads. Remove this mark when transformers stops asking.",
)
def test_the_tokenizer_of_an_oto_folder_loads_without_a_remote_code_question(oto_folder_with_tokenizer, tmp_path):
    folder, tokenizer = oto_folder_with_tokenizer
    loaded, output = _load_without_oto_hf(folder, tmp_path)
    assert loaded["ids"] == tokenizer("the cat sat")["input_ids"]
    assert "Do you wish to run the custom code?" not in output


def test_non_empty_output_dir_is_refused_unless_overwrite(tmp_path):
    model = BertForQuestionAnswering(BertConfig(**TEXT)).eval()
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="is not empty.*overwrite=True"):
        save_pruned(model, target)
    assert (target / "keep.txt").read_text() == "user data"
    save_pruned(model, target, overwrite=True)
    assert (target / "config.json").exists() and not (target / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_leaves_nothing_half_written(tmp_path):
    model = BertForQuestionAnswering(BertConfig(**TEXT)).eval()

    class BrokenTokenizer:
        def save_pretrained(self, path):
            Path(path, "partial.json").write_text("{")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_pruned(model, tmp_path / "out", tokenizer=BrokenTokenizer())
    assert list(tmp_path.iterdir()) == []


def _config_only_copy(folder, target):
    """A new folder holding `folder`'s config.json only, for weights written by the test."""
    target.mkdir()
    (target / "config.json").write_text((folder / "config.json").read_text())
    return target


def test_weights_that_do_not_match_the_config_are_a_clear_error(saved, tmp_path):
    model, _, _, folder = saved["bert"]
    broken = _config_only_copy(folder, tmp_path / "broken")
    model.save_pretrained(tmp_path / "dense")  # unpruned weights
    (broken / "model.safetensors").write_bytes((tmp_path / "dense" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="do not match the pruned shapes recorded in its config.json"):
        transformers.AutoModelForQuestionAnswering.from_pretrained(broken)


def test_save_pruned_needs_a_transformers_model(tmp_path):
    with pytest.raises(TypeError, match="PreTrainedModel"):
        save_pruned(torch.nn.Linear(2, 2), tmp_path / "out")


def test_checkpoint_keys_are_the_stock_ones_when_transformers_renames_them(tmp_path):
    """GPT-NeoX's output embedding is renamed by transformers on save and load; an `oto_*` folder must agree."""
    from safetensors import safe_open

    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**TEXT)).eval()
    model.save_pretrained(tmp_path / "stock")
    groups = discover_groups(model)
    pruned = construct_subnet(model, groups, random_nonuniform_ids(groups, seed=1))
    loaded = assert_save_load_roundtrip(pruned, tmp_path / "pruned", auto_class="AutoModelForCausalLM")
    assert type(loaded).__name__ == "OTOGPTNeoXForCausalLM"

    def keys(path):
        with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
            return set(handle.keys())

    assert keys(tmp_path / "pruned") == keys(tmp_path / "stock")


def test_a_weight_left_missing_or_unused_is_an_error(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    _, _, _, folder = saved["bert"]
    broken = _config_only_copy(folder, tmp_path / "renamed")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["qa_head.weight"] = tensors.pop("qa_outputs.weight")
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    expected = r"(?s)missing from the checkpoint \['qa_outputs.weight'\].*unused \['qa_head.weight'\]"
    with pytest.raises(ValueError, match=expected):
        transformers.AutoModelForQuestionAnswering.from_pretrained(broken)
    base = transformers.AutoModel.from_pretrained(folder)  # a base class may leave the task head unused
    assert type(base).__name__ == "OTOBertModel"


def test_a_reloaded_pruned_model_pruned_again_keeps_both_prunings(tmp_path):
    """The second save records the first pruning's shapes too (here layer 1's, untouched the second time)."""
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**TEXT)).eval()
    groups = discover_groups(model)
    layer_1 = [g.id for g in groups if g.layer == 1][-3:] + [next(g.id for g in groups if g.layer == 1)]
    save_pruned(construct_subnet(model, groups, layer_1), tmp_path / "first")
    reloaded = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "first").eval()
    again = discover_groups(reloaded)
    second = construct_subnet(reloaded, again, [next(g.id for g in again if g.layer == 0)])
    save_pruned(second, tmp_path / "second")
    final = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "second").eval()
    inputs = {"input_ids": torch.randint(0, TEXT["vocab_size"], (2, 7))}
    for a, b in zip(_outputs(final, inputs), _outputs(second, inputs)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    recorded = final.config.oto_module_attributes.keys()  # names relative to the base model
    assert {"encoder.layer.0.attention.self", "encoder.layer.1.attention.self"} <= recorded
