"""write_model_card: the card as plain text, its Hub metadata, the plot, bad input, and the template in a wheel."""

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, metadata_load
from transformers import TrainingArguments

from oto_hf import OTOTrainingArguments, PruningRecord, construct_subnet, discover_groups, save_pruned
from oto_hf.model_card import (
    PLOT_NAME,
    CardInputs,
    build_model_card,
    kept_per_layer_figure,
    template_path,
    training_settings,
    write_model_card,
)
from oto_hf.record import LayerWidths
from tests.utils.asserts import random_nonuniform_ids
from tests.utils.paths import REPO_ROOT
from tests.utils.tiny_models import CASES
from tests.utils.tokenizers import tiny_wordpiece_tokenizer

SECTIONS = [
    "## Base model",
    "## Task and dataset",
    "## Method",
    "## What was removed",
    "## Size and speed",
    "## Evaluation",
    "## How to load",
    "## Citation",
]
EVAL = {"eval_exact_match": 61.25, "eval_f1": 70.5, "eval_loss": 1.75, "eval_runtime": 3.2, "epoch": 2.0}
DENSE_EVAL = {"eval_exact_match": 63.0, "eval_f1": 72.0, "eval_loss": 1.5}


def _case(name):
    return next(case for case in CASES if case.name == name)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A BERT pruned non-uniformly (oto_bert config) and a LLaMA pruned uniformly (stock config), both saved."""
    root = tmp_path_factory.mktemp("cards")
    torch.manual_seed(0)
    bert = _case("bert").build().eval()
    groups = discover_groups(bert)
    pruned_bert = construct_subnet(bert, groups, random_nonuniform_ids(groups, seed=3))
    save_pruned(pruned_bert, root / "bert-pruned")

    llama = _case("llama").build().eval()
    groups = discover_groups(llama)
    first_of_each = {}
    for group in groups:
        first_of_each.setdefault((group.kind, group.layer), group.id)
    pruned_llama = construct_subnet(llama, groups, sorted(first_of_each.values()))
    save_pruned(pruned_llama, root / "llama-pruned")
    return {"bert": (pruned_bert, root / "bert-pruned"), "llama": (pruned_llama, root / "llama-pruned")}


@pytest.fixture
def bert_folder(saved, tmp_path):
    """A fresh copy of the saved BERT folder (cards are written into it)."""
    return Path(shutil.copytree(saved["bert"][1], tmp_path / "bert-pruned"))


def _oto_args(tmp_path):
    return OTOTrainingArguments(
        str(tmp_path / "run"),
        max_steps=100,
        learning_rate=3e-5,
        target_sparsity=0.4,
        sparsity_budget="params",
        hub_token="hf_secret_never_in_cards",
        report_to=[],
    )


def _full_card(folder, model, tmp_path, **overrides):
    kwargs = dict(
        model=model,
        base_model="google-bert/bert-base-uncased",
        dataset="rajpurkar/squad",
        training_args=_oto_args(tmp_path),
        eval_results=EVAL,
        dense_eval_results=DENSE_EVAL,
        latency_ratio=0.5,
        metric_source="https://example.org/eval-log",
        license="apache-2.0",
    )
    kwargs.update(overrides)
    return write_model_card(folder, **kwargs)


def test_card_text_has_every_section_and_the_right_numbers(saved, bert_folder, tmp_path):
    model, _ = saved["bert"]
    record = model.oto_pruning
    readme = _full_card(bert_folder, model, tmp_path)
    assert readme == bert_folder / "README.md"
    text = readme.read_text(encoding="utf-8")

    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    # Sizes: both counts and the ratio, as the pruning record has them.
    before, after = record.params_before, record.params_after
    assert f"| parameters | {before:,} | {after:,} | {after / before:.1%} |" in text
    assert f"| FLOPs | {record.flops_before:,} | {record.flops_after:,} |" in text
    assert f"{1 - after / before:.1%} fewer than the starting model's {before:,}" in text
    # Groups removed per kind, and kept per layer.
    heads = [layer for layer in record.layers if layer.kind == "head"]
    kept_heads, total_heads = sum(layer.kept for layer in heads), sum(layer.total for layer in heads)
    assert f"| attention heads | {record.removed_groups['head']} | {kept_heads} / {total_heads} |" in text
    assert record.removed_groups["head"] == total_heads - kept_heads
    for layer in record.layers:
        assert f"| {layer.kind} | {layer.layer} | `{layer.module}` | {layer.kept} / {layer.total} |" in text
    # Method and hyper-parameters, with the schedule in steps (as OTOTrainingArguments.pruning_schedule computes it).
    assert "DHSPG" in text and "| `target_sparsity` | 0.4 |" in text and "| `sparsity_budget` | `params` |" in text
    assert "| `learning_rate` | 3e-05 |" in text and "| `max_steps` | 100 |" in text
    partition, end = _oto_args(tmp_path).pruning_schedule(100)
    assert f"(step {partition})" in text and f"(step {end})" in text
    assert "hf_secret_never_in_cards" not in text and "hub_token" not in text
    # Latency and evaluation (Trainer prefixes stripped, runtime/epoch left out, dense side by side).
    assert "| latency | | | 0.50 (2.00× faster) |" in text
    assert "| exact_match | 61.25 | 63 | -1.75 |" in text and "| f1 | 70.5 | 72 | -1.5 |" in text
    assert "| loss | 1.75 | 1.5 | +0.25 |" in text and "runtime" not in text and "| epoch" not in text
    assert "Source: https://example.org/eval-log" in text
    # Loading an oto_bert folder: with oto_hf, or with remote code.
    assert "import oto_hf" in text and "trust_remote_code=True" in text and "modeling_oto_bert.py" in text
    assert "AutoModelForQuestionAnswering.from_pretrained(model_id)" in text
    # Citations of OTOv1, v2 and v3.
    for fact in (
        "Only Train Once: A One-Shot Neural Network Training And Pruning Framework",
        "2107.07467",
        "Neural Information Processing Systems",
        "{OTOv2}: Automatic, Generic, User-Friendly",
        "Learning Representations",
        "2312.09411",
        "Erasing Operators",
    ):
        assert fact in text
    # The plot, referenced from the card.
    assert f"![Groups kept per layer]({PLOT_NAME})" in text
    png = (bert_folder / PLOT_NAME).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) < 100_000


def test_card_metadata_parses_with_huggingface_hub(saved, bert_folder, tmp_path):
    model, _ = saved["bert"]
    readme = _full_card(bert_folder, model, tmp_path)
    metadata = metadata_load(readme)
    assert metadata["library_name"] == "transformers"
    assert metadata["base_model"] == "google-bert/bert-base-uncased"
    assert {"oto_hf", "pruning"} <= set(metadata["tags"])
    assert metadata["datasets"] == ["rajpurkar/squad"]
    assert metadata["pipeline_tag"] == "question-answering"  # from the saved class name
    assert metadata["license"] == "apache-2.0" and metadata["language"] == "en"
    (entry,) = metadata["model-index"]
    assert entry["name"] == "bert-base-uncased pruned with OTO"  # what the model is, not its folder's name
    (result,) = entry["results"]
    assert result["task"]["type"] == "question-answering" and result["dataset"]["type"] == "rajpurkar/squad"
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"exact_match": 61.25, "f1": 70.5, "loss": 1.75}
    assert result["source"]["url"] == "https://example.org/eval-log"

    card = ModelCard.load(readme)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "exact_match": 61.25,
        "f1": 70.5,
        "loss": 1.75,
    }
    assert card.data.base_model == "google-bert/bert-base-uncased"


def test_card_from_config_summary_equals_card_from_model(saved, bert_folder, tmp_path):
    model, _ = saved["bert"]
    from_model = _full_card(bert_folder, model, tmp_path).read_text(encoding="utf-8")
    from_config = _full_card(bert_folder, None, tmp_path).read_text(encoding="utf-8")
    assert from_config == from_model


def test_stock_config_card_loads_with_plain_transformers(saved, tmp_path):
    _, source = saved["llama"]
    folder = Path(shutil.copytree(source, tmp_path / "llama-pruned"))
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    text = write_model_card(folder, language=None).read_text(encoding="utf-8")
    assert "oto_hf is not needed" in text and "AutoModelForCausalLM.from_pretrained(model_id)" in text
    assert "trust_remote_code" not in text and "import oto_hf" not in text
    metadata = metadata_load(folder / "README.md")
    assert metadata["pipeline_tag"] == "text-generation" and "language" not in metadata
    assert "model-index" not in metadata and "model_name" not in metadata
    assert "| latency | | | not measured |" in text and "The training arguments were not recorded" in text
    assert "No evaluation results were given" in text


def test_training_arguments_of_other_kinds(bert_folder, tmp_path):
    plain = TrainingArguments(str(tmp_path / "plain"), learning_rate=1e-4, max_steps=7, report_to=[])
    text = str(build_model_card(bert_folder, training_args=plain))
    assert "| `learning_rate` | 0.0001 |" in text and "(`TrainingArguments`)" in text
    assert "The OTO settings (target sparsity, budget, schedule) were not recorded" in text

    text = str(
        build_model_card(
            bert_folder,
            training_args={"target_sparsity": 0.3, "partition_steps": 5, "pruning_end_steps": 20, "max_steps": 40},
        )
    )
    assert "| `target_sparsity` | 0.3 |" in text and "chosen at step 5" in text and "zero by step 20" in text
    assert "were not recorded" not in text
    assert not (bert_folder / "README.md").exists()  # build_model_card writes nothing


def test_model_index_needs_task_and_dataset(bert_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="oto_hf"):
        readme = write_model_card(bert_folder, eval_results={"f1": 70.5})
    assert "model-index" not in metadata_load(readme) and "| f1 | 70.5 |" in readme.read_text(encoding="utf-8")
    assert "needs both `task` and `dataset`" in caplog.text


def test_without_matplotlib_the_card_has_no_plot(bert_folder, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with caplog.at_level(logging.WARNING, logger="oto_hf"):
        readme = write_model_card(bert_folder)
    assert "matplotlib" in caplog.text
    assert not (bert_folder / PLOT_NAME).exists()
    assert PLOT_NAME not in readme.read_text(encoding="utf-8")


@pytest.mark.parametrize("layers", [2, 30])
def test_plot_title_and_legend_overlap_nothing(layers):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    widths = [
        LayerWidths(kind, layer, f"layers.{layer}", total, total // 2)
        for kind, total in (("head", 9), ("neuron", 1536))
        for layer in range(layers)
    ]
    figure = kept_per_layer_figure(widths)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)  # lays the figure out
    title = figure._suptitle.get_window_extent(renderer)  # Private: matplotlib 3.8-3.11 keep the suptitle here
    (legend,) = figure.legends
    boxes = [legend.get_window_extent(renderer), *(ax.get_tightbbox(renderer) for ax in figure.axes)]
    assert not any(title.overlaps(box) for box in boxes)
    assert not any(boxes[0].overlaps(box) for box in boxes[1:])


def test_named_model_and_local_data(bert_folder):
    text = str(
        build_model_card(
            bert_folder, model_name="Tiny BERT, 2x fewer FLOPs", dataset_description="local files: a.json"
        )
    )
    assert text.count("# Tiny BERT, 2x fewer FLOPs") == 1 and "- Dataset: local files: a.json" in text
    text = str(build_model_card(bert_folder, dataset="rajpurkar/squad", dataset_description="its train split"))
    assert "- Dataset: [`rajpurkar/squad`](https://huggingface.co/datasets/rajpurkar/squad); its train split" in text


def _folder_without_summary(bert_folder):
    config = json.loads((bert_folder / "config.json").read_text())
    del config["oto_pruning_summary"]
    (bert_folder / "config.json").write_text(json.dumps(config))
    return bert_folder


@pytest.mark.parametrize(
    "make_folder, kwargs, match",
    [
        (lambda f: f / "missing", {}, "does not exist"),
        (lambda f: (f / "config.json").unlink() or f, {}, "has no config.json"),
        (lambda f: (f / "config.json").write_text("{not json") and f, {}, "is not valid JSON"),
        (_folder_without_summary, {}, "no `oto_pruning_summary`"),
        (lambda f: f, {"eval_results": {"f1": "high"}}, r"`eval_results\['f1'\]` must be a finite number"),
        (lambda f: f, {"eval_results": [0.5]}, "must be a dict"),
        (lambda f: f, {"dense_eval_results": {"f1": 1.0}}, "without `eval_results`"),
        (lambda f: f, {"latency_ratio": -1.0}, "`latency_ratio` must be a positive number"),
        (lambda f: f, {"training_args": 3}, "`training_args` must be"),
        (lambda f: f, {"base_model": ""}, "`base_model` must be a non-empty string"),
    ],
    ids=[
        "missing",
        "no-config",
        "bad-json",
        "no-summary",
        "metric-type",
        "results-type",
        "dense-only",
        "latency",
        "args-type",
        "empty-base-model",
    ],
)
def test_bad_input_is_a_clear_value_error(bert_folder, make_folder, kwargs, match):
    folder = make_folder(bert_folder)
    with pytest.raises(ValueError, match=match):
        write_model_card(folder, **kwargs)
    assert not (bert_folder / "README.md").exists() and not (bert_folder / PLOT_NAME).exists()


def test_a_reloaded_model_falls_back_to_the_saved_summary(bert_folder):
    reloaded = torch.nn.Linear(2, 2)  # like a model loaded from the folder: no `oto_pruning` attribute
    with_model = write_model_card(bert_folder, model=reloaded).read_text()
    assert with_model == write_model_card(bert_folder).read_text()


def test_a_folder_saved_before_pruning_records_still_gets_a_card(bert_folder):
    """A config.json written by oto_hf before `PruningRecord`: this summary schema had no version."""
    config = json.loads((bert_folder / "config.json").read_text())
    config["oto_pruning_summary"] = {
        "removed_groups": {"head": 3, "neuron": 10, "channel": 0},
        "layers": [
            {"kind": "head", "layer": 0, "module": "bert.encoder.layer.0", "total": 4, "kept": 2},
            {"kind": "head", "layer": 1, "module": "bert.encoder.layer.1", "total": 4, "kept": 3},
            {"kind": "neuron", "layer": 0, "module": "bert.encoder.layer.0", "total": 37, "kept": 27},
        ],
        "params_before": 80000,
        "params_after": 60000,
        "flops_before": 800000,
        "flops_after": 600000,
        "dense_config": {"model_type": "bert", "hidden_size": 32, "num_attention_heads": 4},
    }
    (bert_folder / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an old summary is read without complaint
        assert PruningRecord.from_model_or_config(bert_folder).oto_hf_version is None
    text = write_model_card(bert_folder).read_text(encoding="utf-8")
    assert "| attention heads | 3 | 5 / 8 |" in text
    assert "| FFN neurons | 10 | 27 / 37 |" in text and "| head | 1 | `bert.encoder.layer.1` | 3 / 4 |" in text
    assert "| parameters | 80,000 | 60,000 | 75.0% |" in text and "| FLOPs | 800,000 | 600,000 | 75.0% |" in text


def test_the_load_snippets_load_the_tokenizer_too(bert_folder):
    """Without oto_hf, `AutoTokenizer` reads the `oto_*` config too: the snippet trusts its code, so nothing asks."""
    tiny_wordpiece_tokenizer().save_pretrained(bert_folder)
    text = str(build_model_card(bert_folder))
    assert "tokenizer = AutoTokenizer.from_pretrained(model_id)\n" in text  # after `import oto_hf`
    assert "tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True)\n" in text


def test_card_inputs_or_keyword_arguments_give_the_same_card(bert_folder):
    kwargs = dict(base_model="google-bert/bert-base-uncased", dataset="rajpurkar/squad", eval_results=EVAL)
    assert str(build_model_card(bert_folder, CardInputs(**kwargs))) == str(build_model_card(bert_folder, **kwargs))
    with pytest.raises(TypeError, match="not both"):
        build_model_card(bert_folder, CardInputs(), base_model="google-bert/bert-base-uncased")
    with pytest.raises(TypeError, match="unexpected keyword argument 'base_modle'"):
        write_model_card(bert_folder, base_modle="google-bert/bert-base-uncased")
    with pytest.raises(ValueError, match="`latency_ratio` must be a positive number"):
        CardInputs(latency_ratio=0)


def test_settings_in_the_pruning_record_reach_the_card(bert_folder, tmp_path):
    config = json.loads((bert_folder / "config.json").read_text())
    config["oto_pruning_summary"]["training_settings"] = training_settings(_oto_args(tmp_path))
    (bert_folder / "config.json").write_text(json.dumps(config))
    text = write_model_card(bert_folder).read_text(encoding="utf-8")
    assert "| `target_sparsity` | 0.4 |" in text and "| `max_steps` | 100 |" in text
    assert "hf_secret_never_in_cards" not in text
    plain = TrainingArguments(str(tmp_path / "plain"), learning_rate=1e-4, max_steps=7, report_to=[])
    text = write_model_card(bert_folder, training_args=plain).read_text(encoding="utf-8")  # given arguments win
    assert "| `max_steps` | 7 |" in text and "target_sparsity" not in text


def test_template_is_found_in_the_source_tree():
    assert template_path() == REPO_ROOT / "model_cards" / "pruned_model_card.md"


def test_template_ships_in_the_wheel(saved, tmp_path):
    """Build a wheel, install it in a fresh venv, and render a card there, outside the repository."""
    source = tmp_path / "src"  # build from a copy: the build writes build/ and *.egg-info next to the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        if (REPO_ROOT / name).exists():
            shutil.copy(REPO_ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("oto_hf", "model_cards"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=ignore)
    # With setuptools here, build offline; without it (Python >= 3.12 venvs), pip fetches it from the package index.
    isolation = ["--no-build-isolation"] if _has_setuptools() else []
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            *isolation,
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if build.returncode != 0 and not isolation:
        pytest.skip(f"setuptools is not installed here and could not be fetched to build the wheel: {build.stderr}")
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("oto_hf-*.whl")
    # The template is package data of oto_hf.templates, and every package under oto_hf/ is in the (listed) packages.
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "oto_hf/templates/pruned_model_card.md" in names and not any(n.startswith("share/") for n in names)
    packages = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "oto_hf").rglob("__init__.py")}
    assert packages <= names, f"packages missing from pyproject.toml's [tool.setuptools] packages: {packages - names}"

    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-compile",
            "--quiet",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert install.returncode == 0, install.stderr
    # torch, transformers & co. live in this test's environment, which may itself be a venv: make them visible to
    # the new venv (its --system-site-packages only reaches the base interpreter). Only the path is added, so the
    # editable install's import hook (a .pth file there) is not run and oto_hf comes from the wheel.
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outer = [path for path in sys.path if path.endswith("site-packages") and Path(path).is_dir()]
    Path(site_packages, "_outer_environment.pth").write_text("\n".join(outer) + "\n")

    folder = Path(shutil.copytree(saved["bert"][1], tmp_path / "card-from-wheel"))
    script = textwrap.dedent(
        f"""
        import json, oto_hf
        from oto_hf.model_card import template_path, write_model_card
        readme = write_model_card({str(folder)!r}, base_model="google-bert/bert-base-uncased")
        print(json.dumps({{"oto_hf": oto_hf.__file__, "template": str(template_path()), "readme": str(readme)}}))
        """
    )
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run(
        [str(python), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(result["oto_hf"]).resolve().is_relative_to(venv.resolve())
    assert Path(result["template"]).resolve().is_relative_to(venv.resolve())
    assert Path(result["template"]).parent.name == "templates"
    assert Path(result["template"]).read_text() == (REPO_ROOT / "model_cards" / "pruned_model_card.md").read_text()
    text = Path(result["readme"]).read_text(encoding="utf-8")
    assert "## How to load" in text
    assert metadata_load(result["readme"])["base_model"] == "google-bert/bert-base-uncased"


def _has_setuptools() -> bool:
    try:
        import setuptools  # noqa: F401
    except ImportError:
        return False
    return True


def test_decilm_folder_card_says_it_needs_remote_code_and_what_padding_cost(tmp_path):
    from oto_hf import export_pruned
    from tests.export.pruned_llms import pruned_llm

    report = export_pruned(pruned_llm("llama"), tmp_path / "decilm", format="decilm")
    assert report.padded_parameters > 0  # the plan's uneven query heads are padded to one count
    text = write_model_card(report.path, language=None).read_text(encoding="utf-8")
    assert "`decilm` export format (`model_type` `nemotron-nas`)" in text
    assert f"added {report.padded_parameters:,} zero (or copied) parameters" in text
    assert "from_pretrained(model_id, trust_remote_code=True)" in text and "import oto_hf" not in text
    assert "plain transformers loads this model" not in text


def test_a_gqa_model_card_counts_kv_heads_and_plots_them(tmp_path):
    from oto_hf.card_format import removed_rows
    from tests.export.pruned_llms import pruned_llm

    model = pruned_llm("llama")
    record = model.oto_pruning
    kv_layers = [layer for layer in record.layers if layer.kind == "kv_head"]
    assert kv_layers
    rows = {row["kind"]: row for row in removed_rows(record)}
    assert rows["KV heads"]["total"] == sum(layer.total for layer in kv_layers)
    assert rows["KV heads"]["kept"] == sum(layer.kept for layer in kv_layers)
    figure = kept_per_layer_figure(record.layers)
    assert "KV heads" in [ax.get_ylabel() for ax in figure.axes]
