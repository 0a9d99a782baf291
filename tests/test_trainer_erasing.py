"""OTOTrainer with `erase_operators`: operators chosen during training reach zero with their own tensors, and the saved
model has them erased, equals the trained (zero-masked) model, reloads and, for LLaMA, generates the same tokens."""

from __future__ import annotations

import pytest
import torch
import transformers

from oto_hf import OTOTrainer, OTOTrainingArguments, count_parameters
from oto_hf.models.no_op import ERASED_KEY, ErasedModule
from tests.utils.asserts import max_output_diff
from tests.utils.data import TinyClassification
from tests.utils.tiny_models import CASES_BY_NAME
from tests.utils.train_tiny import tiny_args, tiny_model


class TinyText(torch.utils.data.Dataset):
    """Random token sequences for causal language modelling."""

    def __init__(self, size: int = 32, length: int = 12, vocab: int = 99) -> None:
        self.tokens = torch.randint(0, vocab, (size, length), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


def _train(model, tmp_path, dataset, **overrides) -> OTOTrainer:
    torch.manual_seed(0)
    trainer = OTOTrainer(model, tiny_args(str(tmp_path / "run"), **overrides), train_dataset=dataset)
    trainer.train()
    return trainer


def _erased_operators(trainer: OTOTrainer):
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return [trainer.operators[j] for j in optimizer._erasing.erased], optimizer


def _check_erased(trainer: OTOTrainer, auto_class: str, tmp_path):
    """An operator was chosen, all its groups are zero; the saved model has it erased, equals the trained model and
    reloads; returns the trained model and the reloaded one."""
    erased, optimizer = _erased_operators(trainer)
    assert erased, "the target is out of narrowing's reach: an operator must be erased"
    zero = set(optimizer.zero_group_ids())
    assert all(zero.issuperset(op.group_ids) for op in erased)
    assert optimizer.removed_fraction() >= trainer.args.target_sparsity - 1e-9  # budget reached
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    pruned = trainer.pruned_model()
    modules = dict(pruned.named_modules())
    assert all(isinstance(modules[path], ErasedModule) for op in erased for path in op.replaced)
    assert sorted((e["layer"], e["kind"]) for e in getattr(pruned.config, ERASED_KEY)) == sorted(
        (op.layer, op.kind) for op in erased
    )
    inputs = trainer.example_inputs
    assert max_output_diff(pruned, model, inputs) <= 1e-5
    folder = trainer.save_pruned(tmp_path / "pruned", model_card=False)
    loaded = getattr(transformers, auto_class).from_pretrained(folder).eval()
    assert max_output_diff(loaded, model, inputs) <= 1e-5
    return model, loaded


def test_llama_erases_operators_and_generates_the_trained_models_tokens(tmp_path):
    model = CASES_BY_NAME["llama"].build()
    trainer = _train(
        model, tmp_path, TinyText(), erase_operators=True, target_sparsity=0.6, max_family_sparsity=0.5,
        sparsity_budget="params",
    )  # fmt: skip
    assert trainer.saliency == "fisher"  # "auto" resolves to it: operators are scored by their Fisher importance
    trained, loaded = _check_erased(trainer, "AutoModelForCausalLM", tmp_path)
    # the logs count what erasing removes (the operators' own tensors too), as the saved model has it
    last = [entry for entry in trainer.state.log_history if "kept_params" in entry][-1]
    assert last["kept_params"] == pytest.approx(count_parameters(loaded) / count_parameters(trained), abs=1e-4)
    prompt = torch.tensor([[1, 5, 7, 3, 9], [2, 8, 8, 4, 6]])
    settings = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(prompt, **settings), trained.generate(prompt, **settings))


def test_bert_erases_operators_with_their_output_biases(tmp_path):
    """BERT's branches end in a bias before the post-norm: it ramps to zero with the groups, so erasing is exact."""
    trainer = _train(tiny_model(dropout=0.0), tmp_path, TinyClassification(), erase_operators=True,
                     target_sparsity=0.6, max_family_sparsity=0.5)  # fmt: skip
    erased, _ = _erased_operators(trainer)
    params = dict(trainer.model.named_parameters())
    assert any(name.endswith("dense.bias") for op in erased for name in op.extra_params)
    assert all(not params[name].any() for op in erased for name in op.extra_params)
    _check_erased(trainer, "AutoModelForSequenceClassification", tmp_path)


def test_without_erasing_no_layer_is_emptied(tmp_path):
    model = CASES_BY_NAME["llama"].build()
    trainer = _train(model, tmp_path, TinyText(), target_sparsity=0.4, max_family_sparsity=0.5,
                     sparsity_budget="params")  # fmt: skip
    assert trainer.operators == []
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert optimizer._erasing is None
    assert all(count < family.size for family, count in zip(optimizer.families, optimizer.family_zero_counts()))
    pruned = trainer.pruned_model()
    assert not any(isinstance(module, ErasedModule) for module in pruned.modules())


def test_erase_operators_is_checked_with_the_arguments(tmp_path):
    with pytest.raises(ValueError, match="`erase_operators=True`\\) does not work with `uniform_widths=True`"):
        OTOTrainingArguments(str(tmp_path), erase_operators=True, uniform_widths=True)
    with pytest.raises(ValueError, match="`erase_operators` must be a bool"):
        OTOTrainingArguments(str(tmp_path), erase_operators="yes")


def test_erasing_under_fsdp2_is_refused(tmp_path, monkeypatch):
    original = transformers.Trainer.create_accelerator_and_postprocess

    def as_if_fsdp(self):
        original(self)
        self.is_fsdp_enabled = True  # what an accelerate FSDP2 config sets

    monkeypatch.setattr(transformers.Trainer, "create_accelerator_and_postprocess", as_if_fsdp)
    with pytest.raises(ValueError, match=r"`erase_operators=True` does not work under FSDP2 yet"):
        OTOTrainer(tiny_model(), tiny_args(str(tmp_path), erase_operators=True), train_dataset=TinyClassification())
