"""`scripts/run_clm.py` end to end on a tiny random GQA LLaMA and tiny text files; its data, model loading, errors."""

import json
import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tests.scripts.test_assets import write_tiny_gguf
from tests.scripts.test_run_squad import TINY as SQUAD_TINY
from tests.utils.scripts import load_script
from tests.utils.tiny_models import TEXT
from tests.utils.tokenizers import CORPUS, tiny_wordpiece_tokenizer

run_clm = load_script("run_clm")
WORDS = sorted({word for line in CORPUS for word in line.split()})
# run_squad's tiny schedule, in blocks of 16 tokens, with the default budget: FLOPs
DROPPED = ("max_seq_length", "doc_stride", "report_batch_size", "sparsity_budget")
TINY = {**{key: value for key, value in SQUAD_TINY.items() if key not in DROPPED}, "block_size": 16}


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random LLaMA with GQA (4 query heads in 2 KV groups, FFN 37) and a WordPiece tokenizer beside it."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**TEXT, num_key_value_heads=2)).save_pretrained(folder)
    tiny_wordpiece_tokenizer().save_pretrained(folder)
    return folder


def write_text(path, lines: int, seed: int):
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(lines)) + "\n")
    return path


def cli(model, output_dir, cache_dir, **values) -> list[str]:
    values = {"model_name_or_path": model, "output_dir": output_dir, "cache_dir": cache_dir, **TINY, **values}
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def test_run_clm_end_to_end(tiny_llama_dir, tmp_path, monkeypatch, capsys, one_thread):
    uploads = []

    def upload(args):  # push_to_hub.py itself is tested against a local Hub in test_push_to_hub.py
        uploads.append(
            (args.repo_id, args.folder, args.private, sorted(p.name for p in (tmp_path / "out" / "pruned").iterdir()))
        )
        return {"repo_id": args.repo_id, "dry_run": False}

    monkeypatch.setattr(run_clm.push_to_hub, "main", upload)
    train, validation = write_text(tmp_path / "train.txt", 60, 0), write_text(tmp_path / "validation.txt", 12, 1)
    argv = cli(tiny_llama_dir, tmp_path / "out", tmp_path / "cache", train_file=train, validation_file=validation)
    argv += ["--base_model_name", "tester/tiny-llama", "--push_to_hub", "--hub_model_id", "tester/tiny-clm"]
    results = run_clm.main(*run_clm.parse_args(argv))

    trainer = results["trainer"]
    assert results["distillation"] == "dense" and trainer.teacher is not None  # distilled from the dense start
    assert results["zero_groups"] > 0 and results["data"]["block_size"] == 16
    ppl = results["perplexity"]
    assert all(math.isfinite(value) and value > 1 for value in ppl.values())
    assert math.isclose(ppl["trained"], ppl["pruned"], rel_tol=1e-4)  # slicing the zeros away changes nothing
    # perplexity = exp(mean token loss) over the held-out blocks, all of the same length
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "pruned").eval()
    blocks = torch.tensor(trainer.eval_dataset["input_ids"])
    assert blocks.shape[1] == 16 and len(blocks) == results["data"]["validation_blocks"]
    with torch.no_grad():
        loss = torch.stack([reloaded(input_ids=block[None], labels=block[None]).loss for block in blocks]).mean()
    assert math.isclose(ppl["pruned"], math.exp(loss), rel_tol=1e-4)

    report = json.loads((tmp_path / "out" / "compression_report.json").read_text())
    assert sum(p.numel() for p in reloaded.parameters()) == report["params_pruned"] < report["params_dense"]
    assert trainer.args.sparsity_budget == "flops" and report["flops_ratio"] <= 1 - 0.3 + 1e-3  # the target, met
    evals = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert evals["perplexity"] == pytest.approx(ppl)
    assert evals["pruned"]["eval_perplexity"] == pytest.approx(ppl["pruned"])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out" / "pruned")
    prompt = tokenizer("the cat sat on", return_tensors="pt").input_ids
    generated = reloaded.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, prompt.shape[1] + 4)
    card = (tmp_path / "out" / "pruned" / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "# tiny-llama pruned with OTO" in card and "perplexity" in card

    # the pruned folder, card included, is uploaded once at the end; the Trainer uploaded nothing
    assert uploads == [("tester/tiny-clm", str(tmp_path / "out" / "pruned"), False, uploads[0][3])]
    assert "README.md" in uploads[0][3] and "model.safetensors" in uploads[0][3] and not trainer.args.push_to_hub
    printed = capsys.readouterr().out
    assert "Causal LM with Only-Train-Once" in printed and "perplexity   dense start" in printed


def test_distillation_defaults_to_the_dense_model(tmp_path):
    base = ["--model_name_or_path", "m", "--train_file", "t.txt", "--output_dir", str(tmp_path)]
    assert run_clm.parse_args(base)[2].distillation == "dense"
    assert run_clm.parse_args([*base, "--distillation", "none"])[2].distillation == "off"
    assert run_clm.parse_args([*base, "--distillation", "off"])[2].distillation == "off"


def test_a_gguf_file_loads_as_the_plain_class(tmp_path):
    reference = write_tiny_gguf(tmp_path / "tiny.gguf")
    for argv in (
        ["--model_name_or_path", str(tmp_path), "--gguf_file", "tiny.gguf"],
        ["--model_name_or_path", str(tmp_path / "tiny.gguf")],
    ):
        model_args = run_clm.parse_args([*argv, "--train_file", "t.txt", "--output_dir", str(tmp_path / "out")])[0]
        model, tokenizer = run_clm.load_model_and_tokenizer(model_args)
        assert type(model) is LlamaForCausalLM and not hasattr(model.config, "quantization_config")
        torch.testing.assert_close(model.state_dict(), reference.state_dict(), rtol=0, atol=0)
        assert tokenizer.eos_token == "<|im_end|>"


def test_text_becomes_blocks_and_validation_is_held_out(tmp_path):
    blocks = run_clm.group_texts({"input_ids": [[1, 2, 3], [4, 5, 6, 7, 8]], "attention_mask": [[1] * 3, [1] * 5]}, 3)
    assert blocks == {
        "input_ids": [[1, 2, 3], [4, 5, 6]],  # 8 tokens: two blocks of 3, the remainder dropped
        "attention_mask": [[1, 1, 1], [1, 1, 1]],
        "labels": [[1, 2, 3], [4, 5, 6]],
    }
    train = write_text(tmp_path / "train.txt", 40, 0)
    data_args = run_clm.parse_args(
        [
            "--model_name_or_path",
            "m",
            "--train_file",
            str(train),
            "--output_dir",
            str(tmp_path / "out"),
            "--validation_split_percentage",
            "10",
        ]
    )[1]
    raw, names = run_clm.load_raw_text(data_args, str(tmp_path / "cache"), None)
    lines = train.read_text().splitlines(keepends=True)
    assert (
        raw["validation"]["text"] == lines[:4] and raw["train"]["text"] == lines[4:]
    )  # the first 10%, line breaks kept
    assert names == {"train": "train.txt", "validation": "the first 10% of train.txt"}


def test_errors_say_what_to_do(tiny_llama_dir, tmp_path):
    base = ["--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")]
    with pytest.raises(ValueError, match=r"--dataset_name.*--train_file.*assets.py bbc"):
        run_clm.parse_args(["--model_name_or_path", "m", *base])
    with pytest.raises(ValueError, match=r"`--train_file` must be one of"):
        run_clm.parse_args(["--model_name_or_path", "m", "--train_file", "data.parquet", *base])
    hub = run_clm.parse_args(["--model_name_or_path", "no-such-user/no-such-llm", "--train_file", "t.txt", *base])
    with pytest.raises(RuntimeError, match=r"(?s)Could not load model 'no-such-user/no-such-llm'.*assets.py smollm2"):
        run_clm.load_model_and_tokenizer(hub[0])
    data_args = run_clm.parse_args(
        ["--model_name_or_path", "m", "--dataset_name", "no-such-user/no-such-text", *base]
    )[1]
    with pytest.raises(RuntimeError, match=r"(?s)Could not load dataset 'no-such-user/no-such-text'.*--train_file"):
        run_clm.load_raw_text(data_args, str(tmp_path / "cache"), None)
    with pytest.raises(ValueError, match=r"`--train_file` .*missing.txt' does not exist"):
        run_clm.main(
            *run_clm.parse_args(
                ["--model_name_or_path", str(tiny_llama_dir), "--train_file", str(tmp_path / "missing.txt"), *base]
            )
        )
    short = write_text(tmp_path / "short.txt", 1, 0)
    with pytest.raises(ValueError, match=r"short.txt has 1 rows: too few to hold out validation rows"):
        run_clm.main(
            *run_clm.parse_args(["--model_name_or_path", str(tiny_llama_dir), "--train_file", str(short), *base])
        )
    base += ["--validation_file", str(short)]
    args = run_clm.parse_args(
        ["--model_name_or_path", str(tiny_llama_dir), "--train_file", str(short), "--block_size", "64", *base]
    )
    with pytest.raises(ValueError, match=r"fewer than 64 tokens: not one block\. Lower `--block_size`"):
        run_clm.main(*args)
