"""PruningRecord: what construct_subnet attaches, its dict form in config.json, and records saved by older versions."""

import json

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel

import oto_hf
from oto_hf import OTOTrainer, PruningRecord, construct_subnet, discover_groups, save_pruned
from oto_hf.record import SUMMARY_KEY, LayerWidths
from tests.utils.asserts import max_output_diff
from tests.utils.data import TinyClassification
from tests.utils.tiny_models import TEXT
from tests.utils.train_tiny import tiny_args, tiny_model

# `oto_pruning_summary` as save_pruned wrote it before PruningRecord: no version, removed_groups stored.
OLD_SUMMARY = {
    "removed_groups": {"head": 1, "neuron": 3, "channel": 0},
    "layers": [
        {"kind": "head", "layer": 0, "module": "encoder.layer.0", "total": 4, "kept": 3},
        {"kind": "neuron", "layer": 0, "module": "encoder.layer.0", "total": 37, "kept": 34},
    ],
    "params_before": 1000,
    "params_after": 900,
    "flops_before": 5000,
    "flops_after": None,
    "dense_config": {"model_type": "bert", "hidden_size": 32},
}


@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    model = BertModel(BertConfig(**TEXT)).eval()
    groups = discover_groups(model)
    return construct_subnet(model, groups, [0, 9, 10, 50])  # head 0 of layer 0, three neurons


def test_construct_subnet_attaches_a_record(pruned):
    record = pruned.oto_pruning
    assert isinstance(record, PruningRecord) and record.oto_hf_version == oto_hf.__version__
    assert record.removed_groups == {"head": 1, "neuron": 3, "channel": 0}
    assert record.params_after == sum(p.numel() for p in pruned.parameters()) < record.params_before
    assert record.flops_after < record.flops_before
    heads = [layer for layer in record.layers if layer.kind == "head"]
    assert [(layer.layer, layer.kept, layer.total, layer.removed) for layer in heads] == [(0, 3, 4, 1), (1, 4, 4, 0)]
    assert record.tensor_shapes["encoder.layer.0.attention.self.query.weight"] == [24, 32]
    assert record.module_attributes["encoder.layer.0.attention.self"]["num_attention_heads"] == 3


def test_dict_round_trip(pruned):
    record = pruned.oto_pruning
    data = json.loads(json.dumps(record.to_dict()))  # JSON-ready
    assert data["removed_groups"] == record.removed_groups
    assert PruningRecord.from_dict(data) == record
    summary = record.to_dict(shapes=False)
    assert "tensor_shapes" not in summary and "module_attributes" not in summary
    assert PruningRecord.from_dict(summary).tensor_shapes == {}


def test_an_old_summary_loads():
    record = PruningRecord.from_dict(OLD_SUMMARY)
    assert record.oto_hf_version is None  # written before the version was recorded
    assert record.removed_groups == OLD_SUMMARY["removed_groups"]
    assert record.layers[1] == LayerWidths(kind="neuron", layer=0, module="encoder.layer.0", total=37, kept=34)
    assert (record.params_before, record.flops_after, record.dense_config) == (
        1000,
        None,
        {"model_type": "bert", "hidden_size": 32},
    )


def test_unknown_keys_warn_and_are_dropped():
    newer = {**OLD_SUMMARY, "oto_hf_version": "9.0.0", "energy": 3.5}
    newer["layers"] = [{**OLD_SUMMARY["layers"][0], "colour": "red"}]
    with pytest.warns(UserWarning) as caught:
        record = PruningRecord.from_dict(newer)
    messages = sorted(str(warning.message) for warning in caught)
    assert len(messages) == 2
    assert "unknown keys ['colour'] in a `layers` entry" in messages[0] and "unknown keys ['energy']" in messages[1]
    assert record.oto_hf_version == "9.0.0" and not hasattr(record, "energy") and len(record.layers) == 1


@pytest.mark.parametrize(
    "data, match",
    [
        ([1, 2], "must be a dict"),
        ({"params_before": 3}, "no valid `layers` list"),
        ({"layers": [{"kind": "head", "layer": 0}]}, r"no valid `layers` list of \{kind, layer, module, total, kept"),
    ],
    ids=["not-a-dict", "no-layers", "incomplete-layer"],
)
def test_bad_records_are_a_clear_value_error(data, match):
    with pytest.raises(ValueError, match=match):
        PruningRecord.from_dict(data, source="`oto_pruning_summary` in config.json")


def test_from_model_or_config_finds_the_record_wherever_it_is(pruned, tmp_path):
    folder = save_pruned(pruned, tmp_path / "pruned")
    config = json.loads((folder / "config.json").read_text())
    assert config[SUMMARY_KEY]["oto_hf_version"] == oto_hf.__version__ == config["oto_hf_version"]
    assert config[SUMMARY_KEY]["dense_config"]["num_attention_heads"] == 4
    assert PruningRecord.from_model_or_config(pruned) is pruned.oto_pruning

    reloaded = AutoModel.from_pretrained(folder)
    expected = PruningRecord.from_dict(pruned.oto_pruning.to_dict(shapes=False))
    for source in (reloaded, reloaded.config, config, folder, str(folder / "config.json")):
        found = PruningRecord.from_model_or_config(source)
        assert found.layers == expected.layers and found.params_after == expected.params_after
        assert found.dense_config == config[SUMMARY_KEY]["dense_config"]
    assert PruningRecord.from_model_or_config(torch.nn.Linear(2, 2)) is None
    assert PruningRecord.from_model_or_config({"model_type": "bert"}) is None
    with pytest.raises(ValueError, match="Cannot read the pruning record"):
        PruningRecord.from_model_or_config(tmp_path / "missing")


def test_chained_pruning_keeps_the_earlier_shapes(pruned, tmp_path):
    groups = discover_groups(pruned)
    again = construct_subnet(pruned, groups, [g.id for g in groups if g.kind == "neuron" and g.layer == 1][:2])
    record = again.oto_pruning
    assert record.tensor_shapes["encoder.layer.0.attention.self.query.weight"] == [24, 32]  # from the first pruning
    assert record.tensor_shapes["encoder.layer.1.intermediate.dense.weight"] == [34, 32]  # 37 - 1 - 2
    assert record.removed_groups == {"head": 0, "neuron": 2, "channel": 0}
    reloaded = AutoModel.from_pretrained(save_pruned(again, tmp_path / "twice"))
    assert max_output_diff(reloaded, again, groups.example_inputs) <= 1e-5


def test_the_trainer_records_its_settings_without_secrets(tmp_path):
    args = tiny_args(str(tmp_path), hub_token="hf_secret_never_recorded")
    trainer = OTOTrainer(tiny_model(), args, train_dataset=TinyClassification())
    settings = trainer.pruned_model().oto_pruning.training_settings
    assert (settings["target_sparsity"], settings["max_steps"], settings["sparsity_budget"]) == (0.3, 24, "groups")
    assert "hf_secret_never_recorded" not in json.dumps(settings)
