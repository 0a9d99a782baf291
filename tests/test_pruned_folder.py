"""read_pruned_folder: what a folder written by save_pruned holds, and a clear error for every other folder."""

import json

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering

from oto_hf import PruningRecord, construct_subnet, discover_groups, read_pruned_folder, save_pruned
from tests.utils.asserts import random_nonuniform_ids
from tests.utils.tiny_models import TEXT


def _bert() -> BertForQuestionAnswering:
    torch.manual_seed(0)
    return BertForQuestionAnswering(BertConfig(**TEXT)).eval()


@pytest.fixture(scope="module")
def oto_folder(tmp_path_factory):
    """A BERT pruned non-uniformly, saved with its `oto_bert` config, and the pruned model."""
    model = _bert()
    groups = discover_groups(model)
    pruned = construct_subnet(model, groups, random_nonuniform_ids(groups, seed=3))
    return save_pruned(pruned, tmp_path_factory.mktemp("saved") / "oto"), pruned


def test_an_oto_folder_gives_its_config_and_record(oto_folder):
    folder, pruned = oto_folder
    saved = read_pruned_folder(str(folder))
    assert saved.path == folder and saved.config == json.loads((folder / "config.json").read_text())
    assert saved.config["model_type"] == "oto_bert"
    assert isinstance(saved.record, PruningRecord) and saved.record.layers == pruned.oto_pruning.layers
    assert saved.record.params_after == pruned.oto_pruning.params_after < saved.record.params_before


def test_a_subnet_that_removed_nothing_still_has_a_record(tmp_path):
    model = _bert()
    folder = save_pruned(construct_subnet(model, discover_groups(model), []), tmp_path / "all-kept")
    saved = read_pruned_folder(folder)
    assert saved.config["model_type"] == "bert" and saved.record.params_after == saved.record.params_before


def test_a_stock_folder_has_no_record(tmp_path):
    _bert().save_pretrained(tmp_path / "stock")
    with pytest.raises(ValueError, match=r"holds a 'bert' model that was not saved by oto_hf.*oto_pruning_summary"):
        read_pruned_folder(tmp_path / "stock")
    save_pruned(_bert(), tmp_path / "unpruned")
    with pytest.raises(ValueError, match="was saved by oto_hf before pruning.*construct_subnet"):
        read_pruned_folder(tmp_path / "unpruned")
    saved = read_pruned_folder(tmp_path / "stock", require_record=False)
    assert saved.record is None and saved.config["model_type"] == "bert"


def _copy_config(folder, target, text=None):
    target.mkdir()
    (target / "config.json").write_text((folder / "config.json").read_text() if text is None else text)
    return target


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda folder, tmp: tmp / "missing", r"Folder '.*missing' does not exist.*save_pruned"),
        (lambda folder, tmp: folder / "config.json", "is a file, not a folder"),
        (lambda folder, tmp: tmp, "has no config.json, so it is not a saved transformers model.*save_pruned"),
        (lambda folder, tmp: _copy_config(folder, tmp / "bad", "{not json"), "is not valid JSON"),
        (lambda folder, tmp: _copy_config(folder, tmp / "no-type", "{}"), "has no `model_type`"),
        (lambda folder, tmp: _copy_config(folder, tmp / "no-weights"), r"has config.json but no weights"),
    ],
    ids=["missing", "file", "no-config", "bad-json", "no-model-type", "no-weights"],
)
def test_folders_that_are_not_saved_models(oto_folder, tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        read_pruned_folder(make(oto_folder[0], tmp_path))


def test_weights_are_optional_when_asked(oto_folder, tmp_path):
    folder = _copy_config(oto_folder[0], tmp_path / "config-only")
    assert read_pruned_folder(folder, require_weights=False).record.layers == oto_folder[1].oto_pruning.layers


def test_the_folder_must_be_a_path():
    with pytest.raises(TypeError, match="must be a str or Path, got int"):
        read_pruned_folder(3)
