"""OTOTrainer: exact target, logs, export, resume, several processes, and what its defaults reach."""

import logging
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoConfig, AutoModelForSequenceClassification, TrainingArguments

from oto_hf import OTOTrainer, OTOTrainingArguments, read_pruned_folder
from oto_hf.model_card import CARD_TAGS
from tests.utils.data import TinyClassification
from tests.utils.paths import REPO_ROOT
from tests.utils.train_tiny import tiny_args, tiny_model


def _zero_count(trainer):
    return len(trainer.groups.zero_group_ids(trainer.model))


def test_trains_to_the_exact_target_and_exports(tmp_path):
    model = tiny_model()
    trainer = OTOTrainer(
        model,
        tiny_args(str(tmp_path)),
        train_dataset=TinyClassification(),
        eval_dataset=TinyClassification(size=32, seed=1),
    )
    counts = []

    class Watch:
        def on_step_end(self, args, state, control, **kwargs):
            counts.append(_zero_count(trainer))

    from transformers import TrainerCallback

    trainer.add_callback(type("WatchCallback", (TrainerCallback,), {"on_step_end": Watch.on_step_end}))
    trainer.train()
    target = round(0.3 * len(trainer.groups))
    assert counts[13:] == [target] * (24 - 13), counts  # exact from pruning_end (14 steps) on, and stays
    assert all(c <= target for c in counts)

    logs = [h for h in trainer.state.log_history if "group_sparsity" in h]
    assert logs and logs[-1]["group_sparsity"] == round(target / len(trainer.groups), 4)
    assert 0 < logs[-1]["kept_params"] < 1 and 0 < logs[-1]["kept_flops"] < 1

    dense_metrics = trainer.evaluate()
    folder = trainer.save_pruned(tmp_path / "pruned")
    assert folder == tmp_path / "pruned"  # a Path, as oto_hf.save_pruned returns
    record = read_pruned_folder(folder).record
    assert record.params_after < record.params_before
    card = (folder / "README.md").read_text(encoding="utf-8")  # written by create_model_card, as TRL's trainers do
    assert "OTOTrainingArguments" in card and "- oto_hf" in card and (folder / "kept_per_layer.png").is_file()
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder)
    trainer.model = reloaded
    pruned_metrics = trainer.evaluate()
    assert pruned_metrics["eval_loss"] == pytest.approx(dense_metrics["eval_loss"], abs=1e-5)


def test_plain_training_arguments_are_upgraded(tmp_path):
    args = TrainingArguments(str(tmp_path), max_steps=4, report_to=[], use_cpu=True)
    trainer = OTOTrainer(tiny_model(), args, train_dataset=TinyClassification())
    assert isinstance(trainer.args, OTOTrainingArguments) and trainer.args.max_steps == 4
    assert trainer.args.target_sparsity == 0.5


def test_every_layer_keeps_its_minimum_of_heads(tmp_path):
    trainer = OTOTrainer(
        tiny_model(),
        tiny_args(str(tmp_path), min_heads_per_layer=2, target_sparsity=0.9, max_family_sparsity=1.0),
        train_dataset=TinyClassification(),
    )
    trainer.train()
    zero = set(trainer.groups.zero_group_ids(trainer.model))
    assert len(zero) == round(0.9 * len(trainer.groups))
    for layer in (0, 1):
        heads = [g.id for g in trainer.groups if g.kind == "head" and g.layer == layer]
        assert len([i for i in heads if i not in zero]) >= 2
    pruned = AutoModelForSequenceClassification.from_pretrained(trainer.save_pruned(tmp_path / "pruned"))
    assert pruned.bert.encoder.layer[0].attention.self.query.out_features >= 16  # whole FFNs may go; heads never all


def test_uniform_widths_save_a_stock_config(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.utils.tiny_models import TEXT

    class LanguageModelling(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, index):
            ids = torch.arange(index, index + 10) % 99
            return {"input_ids": ids, "labels": ids}

    model = LlamaForCausalLM(LlamaConfig(**TEXT, num_key_value_heads=2))
    trainer = OTOTrainer(
        model, tiny_args(str(tmp_path), uniform_widths=True, target_sparsity=0.4), train_dataset=LanguageModelling()
    )
    trainer.train()
    trainer.save_pruned(tmp_path / "pruned")
    config = AutoConfig.from_pretrained(tmp_path / "pruned")
    assert config.model_type == "llama"  # uniform widths: the stock config describes the pruned model
    assert config.intermediate_size < 37


def test_accumulation_clipping_and_bf16(tmp_path):
    args = tiny_args(
        str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_grad_norm=0.5,
        bf16=True,
        target_sparsity=0.5,
    )
    trainer = OTOTrainer(tiny_model(), args, train_dataset=TinyClassification())
    trainer.train()
    assert _zero_count(trainer) == round(0.5 * len(trainer.groups))


@pytest.mark.parametrize("saliency", ["fisher", "kfac", "output", "sample_fisher"])
def test_flops_budget(tmp_path, saliency):
    trainer = OTOTrainer(
        tiny_model(),
        tiny_args(str(tmp_path), sparsity_budget="flops", target_sparsity=0.2, dhspg_saliency=saliency),
        train_dataset=TinyClassification(),
    )
    trainer.train()
    zero = trainer.groups.zero_group_ids(trainer.model)
    removed = sum(trainer.group_flops[i] for i in zero) / trainer.dense_flops
    assert removed >= 0.2 and removed - 0.2 <= max(trainer.group_flops)
    assert all(not module._forward_hooks for module in trainer.model.modules())  # output importance's hooks are gone
    with pytest.raises(ValueError, match="cannot be met"):
        OTOTrainer(
            tiny_model(),
            tiny_args(str(tmp_path), sparsity_budget="flops", target_sparsity=0.95, prune_kinds=["neuron"]),
            train_dataset=TinyClassification(),
        )


def test_pruning_end_after_training_is_refused(tmp_path):
    trainer = OTOTrainer(
        tiny_model(), tiny_args(str(tmp_path), pruning_end_steps=40), train_dataset=TinyClassification()
    )
    with pytest.raises(ValueError, match="after the last training step"):
        trainer.train()


def test_resume_is_bit_identical(tmp_path):
    full = OTOTrainer(tiny_model(), tiny_args(str(tmp_path / "full")), train_dataset=TinyClassification())
    full.train()

    first = OTOTrainer(
        tiny_model(),
        tiny_args(str(tmp_path / "cut"), save_strategy="steps", save_steps=9),
        train_dataset=TinyClassification(),
    )
    first.train()  # saves checkpoint-9 (pruning phase: partition at 4, deadline at 14) and checkpoint-18, 24
    resumed = OTOTrainer(tiny_model(seed=1), tiny_args(str(tmp_path / "cut")), train_dataset=TinyClassification())
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-9"))
    expected, got = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_two_processes_match_one(tmp_path):
    """DDP with distillation from the dense start: the teacher runs on every rank, outside DDP."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "tests.utils.train_tiny", str(tmp_path / "one"), "8", "dense"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    double = subprocess.run(
        [*launcher, "-m", "tests.utils.train_tiny", str(tmp_path / "two"), "4", "dense"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "weights-rank0.pt")
    rank0, rank1 = (torch.load(tmp_path / "two" / f"weights-rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any((one[key] == 0).any() for key in one)
    for key in one:  # the same global batch: the same zero groups, the same weights up to reduction order
        assert torch.equal(one[key] == 0, rank0[key] == 0), key
        assert torch.allclose(one[key], rank0[key], atol=1e-4), key


def test_heads_whose_loss_ignores_num_items_in_batch(tmp_path):
    classifier = OTOTrainer(tiny_model(), tiny_args(str(tmp_path)), train_dataset=TinyClassification())
    assert classifier.model_accepts_loss_kwargs is False  # mean cross-entropy: no world-size loss scaling

    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.utils.tiny_models import TEXT

    class LanguageModelling(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, index):
            ids = torch.arange(index, index + 10) % 99
            return {"input_ids": ids, "labels": ids}

    causal = OTOTrainer(
        LlamaForCausalLM(LlamaConfig(**TEXT, num_key_value_heads=2)),
        tiny_args(str(tmp_path)),
        train_dataset=LanguageModelling(),
    )
    assert causal.model_accepts_loss_kwargs is True


def test_training_by_epochs(tmp_path):
    args = tiny_args(
        str(tmp_path),
        max_steps=-1,
        num_train_epochs=3,
        partition_steps=0,
        pruning_end_steps=0,
        partition_ratio=0.1,
        pruning_end_ratio=0.5,
    )
    trainer = OTOTrainer(tiny_model(), args, train_dataset=TinyClassification())
    trainer.train()  # 64 examples / 8 = 8 steps per epoch, 24 steps
    assert _zero_count(trainer) == round(0.3 * len(trainer.groups))


def default_args(output_dir: str, **overrides) -> OTOTrainingArguments:
    """The OTO defaults (FLOPs budget, progressive DHSPG, Fisher importance); only the run's size is set."""
    values = dict(
        max_steps=30,
        per_device_train_batch_size=8,
        learning_rate=2e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=3,
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    return OTOTrainingArguments(output_dir, **values)


def test_defaults_reach_the_flops_target_with_no_forced_zero_and_keep_the_pooler(tmp_path):
    args = default_args(str(tmp_path), target_sparsity=0.4)
    assert (args.sparsity_budget, args.dhspg_lambda_schedule, args.dhspg_saliency) == (
        "flops",
        "progressive",
        "auto",
    )
    trainer = OTOTrainer(tiny_model(), args, train_dataset=TinyClassification())
    assert trainer.saliency == "output"  # a linear layer reads every head and neuron of BERT
    assert [key[0][0].split(".")[:2] for key in trainer.never_empty] == [["bert", "pooler"]]
    trainer.train()
    zero = set(trainer.groups.zero_group_ids(trainer.model))
    removed = sum(trainer.group_flops[i] for i in zero) / trainer.dense_flops
    assert removed >= 0.4
    logs = [h for h in trainer.state.log_history if "dhspg/forced_zero" in h]
    assert logs[-1]["dhspg/forced_zero"] == 0 and logs[-1]["dhspg/natural_zero"] == len(zero)
    assert logs[-1]["kept_flops"] <= 0.6
    kinds = trainer.groups.counts()
    for kind, total in kinds.items():
        assert logs[-1][f"sparsity/{kind}"] == round(sum(trainer.groups[i].kind == kind for i in zero) / total, 4)
    # Every family keeps at least 10% of its groups (max_family_sparsity 0.9), the pooler at least one.
    for key, members in trainer.groups.families().items():
        kept = sum(g.id not in zero for g in members)
        assert kept >= max(1, len(members) - int(0.9 * len(members))), key
    # the record (and so the model card) names the saliency that ranked the groups, not "auto"
    assert trainer.pruned_model().oto_pruning.training_settings["dhspg_saliency"] == "output"


def test_a_loss_jump_while_groups_go_is_logged(tmp_path, caplog):
    trainer = OTOTrainer(tiny_model(), default_args(str(tmp_path)), train_dataset=TinyClassification())
    trainer.state.global_step = 7
    with caplog.at_level(logging.WARNING):
        trainer._warn_on_loss_jump(0.30, num_zero=0)
        trainer._warn_on_loss_jump(0.31, num_zero=5)  # groups went, the loss held: quiet
        trainer._warn_on_loss_jump(0.90, num_zero=9)
        trainer._warn_on_loss_jump(2.00, num_zero=9)  # no group went: not a pruning shock
    assert caplog.text.count("the training loss rose") == 1
    assert "from 0.3100 to 0.9000 while 4 groups became zero" in caplog.text


def test_create_model_card_writes_the_card_of_the_pruned_folder(tmp_path):
    """As TRL's trainers do: a card of what was saved, with this run's arguments and the base model's Hub id."""
    model = tiny_model()
    model.config.name_or_path = "google-bert/bert-base-uncased"  # as if loaded from the Hub
    trainer = OTOTrainer(model, tiny_args(str(tmp_path / "run")), train_dataset=TinyClassification())
    assert trainer.create_model_card() is None  # no pruned folder yet (`push_to_hub`): the Trainer's own card
    assert "generated_from_trainer" in (tmp_path / "run" / "README.md").read_text(encoding="utf-8")

    folder = trainer.save_pruned(model_card=False)
    assert folder == tmp_path / "run" / "pruned" and not (folder / "README.md").exists()
    readme = trainer.create_model_card(
        model_name="Tiny BERT", dataset_name="stanfordnlp/imdb", tags="my-tag", eval_results={"eval_accuracy": 0.5}
    )
    assert readme == folder / "README.md"
    card = ModelCard.load(readme)
    assert card.data.base_model == "google-bert/bert-base-uncased" and card.data.datasets == ["stanfordnlp/imdb"]
    assert card.data.tags == [*CARD_TAGS, "my-tag"] and card.data.model_name == "Tiny BERT"
    assert "OTOTrainingArguments" in card.text and "| accuracy | 0.5 |" in card.text
    assert "the groups are scored (`output` saliency)" in card.text  # "auto" as resolved for this model

    with pytest.raises(ValueError, match="has no config.json"):  # a given folder must be one save_pruned wrote
        trainer.create_model_card(output_dir=tmp_path / "run")


def test_groups_are_traced_on_a_short_example_and_flops_priced_on_the_whole_one(monkeypatch, tmp_path):
    import oto_hf.trainer as trainer_module

    traced = []
    discover = trainer_module.discover_groups
    monkeypatch.setattr(
        trainer_module,
        "discover_groups",
        lambda model, inputs, **kw: traced.append(inputs) or discover(model, inputs, **kw),
    )
    model = tiny_model(dropout=0.0)
    dataset = TinyClassification(size=4, length=40)
    trainer = OTOTrainer(model, tiny_args(str(tmp_path)), train_dataset=dataset)
    assert traced[0]["input_ids"].shape == (1, 32) and trainer.example_inputs["input_ids"].shape == (1, 40)
    on_whole = discover(model, trainer.example_inputs)  # the same groups as on the whole example

    def listed(groups):
        return [[(name, dim, indices.tolist()) for name, dim, indices in group.slices] for group in groups]

    assert listed(trainer.groups) == listed(on_whole)
    assert trainer.dense_flops > 0


def test_save_pruned_writes_the_chosen_format_and_cards_only_folders(tmp_path):
    from oto_hf import ExportReport, register_format

    def write_state_dict(model, staging, tokenizer=None):
        torch.save(model.state_dict(), staging / "weights.pt")
        return ExportReport(format="test-one-file")

    register_format("test-one-file", write_state_dict, writes="file", description="a test format: one torch file")
    trainer = OTOTrainer(tiny_model(), tiny_args(str(tmp_path / "run")), train_dataset=TinyClassification())
    path = trainer.save_pruned(tmp_path / "model.pt", format="test-one-file")
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "run"]  # no card beside it
    with pytest.raises(ValueError, match="Unknown export format 'nope'. Registered formats: 'auto'"):
        trainer.save_pruned(tmp_path / "other", format="nope")
    with pytest.raises(ValueError, match=r"got unknown option\(s\) \['dtype'\]"):
        trainer.save_pruned(tmp_path / "other", dtype="f16")
