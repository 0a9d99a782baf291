"""The export-format registry: dispatch by name, clear errors for unknown formats and options, nothing half-written."""

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from oto_hf import save_pruned
from oto_hf.export import ExportReport, get_format, register_format, registered_formats, registry
from oto_hf.saving import export_pruned
from tests.utils.tiny_models import TEXT


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TEXT, num_key_value_heads=2)).eval()


@pytest.fixture(autouse=True)
def _restore_registry(monkeypatch):
    """Formats registered by a test are gone after it."""
    monkeypatch.setattr(registry, "_FORMATS", dict(registry._FORMATS))


def test_unknown_format_lists_the_registered_ones(model, tmp_path):
    with pytest.raises(ValueError, match="Unknown export format 'onnx'. Registered formats: 'auto'"):
        save_pruned(model, tmp_path / "out", format="onnx")
    assert not (tmp_path / "out").exists()
    assert "auto" in registered_formats()


def test_unknown_option_names_the_options_the_format_takes(model, tmp_path):
    expected = r"format='auto'\) got unknown option\(s\) \['pad_to'\]; this format takes: none"
    with pytest.raises(ValueError, match=expected):
        save_pruned(model, tmp_path / "out", pad_to=64)
    assert list(tmp_path.iterdir()) == []


def _failing_writer(model, staging: Path, tokenizer=None, *, fail: bool = True) -> ExportReport:
    (staging / "config.json").write_text("{}")
    if fail:
        raise ValueError("this format cannot hold the model")
    return ExportReport(format="test-failing")


def _file_writer(model, staging: Path, tokenizer=None) -> ExportReport:
    (staging / "model.bin").write_bytes(b"weights")
    return ExportReport(format="test-file")


def test_a_failing_writer_leaves_nothing_and_the_old_folder_intact(model, tmp_path):
    register_format("test-failing", _failing_writer, description="fails on request")
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("kept")
    with pytest.raises(ValueError, match="cannot hold"):
        save_pruned(model, target, overwrite=True, format="test-failing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    report = export_pruned(model, target, overwrite=True, format="test-failing", fail=False)
    assert report.path == target and [p.name for p in target.iterdir()] == ["config.json"]


def test_a_file_format_writes_the_path_it_is_given(model, tmp_path):
    register_format("test-file", _file_writer, description="one file", writes="file")
    assert get_format("test-file").writes == "file"
    path = save_pruned(model, tmp_path / "model.bin", format="test-file")
    assert path.read_bytes() == b"weights" and sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]
    with pytest.raises(ValueError, match="not empty"):
        save_pruned(model, path, format="test-file")
    with pytest.raises(ValueError, match="writes one file, but .* is a directory"):
        save_pruned(model, tmp_path, format="test-file")


def test_a_name_cannot_be_registered_twice_with_another_writer():
    with pytest.raises(ValueError, match="already registered"):
        register_format("auto", _file_writer, description="another")


def test_auto_reports_the_config_type(model, tmp_path):
    report = export_pruned(model, tmp_path / "out")
    assert report.format == "auto" and report.path == tmp_path / "out" and report.padded == []
    assert report.notes == ["config type llama"]
