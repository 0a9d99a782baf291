"""`OTOTrainer`: a `Trainer` that trains and prunes at once with DHSPG, then saves the smaller model."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainingArguments

from .bottlenecks import bottleneck_families
from .costs import group_flop_costs
from .discovery import discover_groups
from .distillation import distillation_loss, freeze, load_teacher
from .erasing import erase_operators, find_operators
from .export import get_format
from .fsdp import gather_full_model
from .graph.export import default_example_inputs
from .graph.groups import GroupSet
from .graph.operators import Operator
from .model_card import write_model_card
from .optim import DHSPG
from .optim.dhspg import importance_source_for
from .optim.operator_erasing import zero_operators
from .optim.readers import choose_saliency
from .saving import save_pruned
from .stats import count_parameters
from .subnet import construct_subnet
from .training_args import OTOTrainingArguments, training_settings
from .utils import device_of, eval_mode, one_short_example, to_device

logger = get_logger(__name__)


class OTOTrainer(Trainer):
    """`Trainer` with Only-Train-Once: discovers the model's zero-invariant groups, trains with DHSPG so that exactly
    the target is zero by `pruning_end_steps`, logs the sparsity, and saves the physically smaller model.

    Families whose removal would disconnect the output from the input (found by `bottleneck_families`, e.g. the dense
    layer of a classifier's pooler) always keep a group. With `args.distillation`, the loss mixes the task's with a
    distillation loss from a frozen teacher (the dense starting model, a saved model, or `teacher`); the teacher runs
    in eval mode without gradients and is never saved.

    Args:
        model (`PreTrainedModel` or `nn.Module`): the model to train and prune.
        args (`OTOTrainingArguments` or `TrainingArguments`, *optional*): plain `TrainingArguments` are upgraded with
            the OTO defaults; `None` writes to `<model name>-oto`.
        groups (`GroupSet`, *optional*): groups to prune; discovered from the model when omitted (traced on the
            first training example cut to 32 tokens when a train dataset is given, else on inputs derived from its
            config). FLOPs are priced on the whole example.
        example_inputs (*optional*): inputs for tracing and FLOP counts, overriding the above.
        teacher (`nn.Module`, *optional*): the teacher for distillation, overriding `args.distillation`'s source.
        **kwargs: every other `Trainer` argument (datasets, collator, `processing_class`, callbacks, ...).

    Example:
    ```python
    >>> trainer = OTOTrainer(model, OTOTrainingArguments("out", target_sparsity=0.3, max_steps=1000), train_dataset=ds)
    >>> trainer.train()
    >>> folder = trainer.save_pruned("out/pruned")  # the smaller model, its tokenizer and its model card
    ```
    """

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        args: TrainingArguments | None = None,
        groups: GroupSet | None = None,
        example_inputs: Any = None,
        teacher: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError("OTOTrainer needs a `model` (model_init is not supported: groups come from the model).")
        if args is None:
            # Private: `PretrainedConfig._name_or_path` (checked against transformers 5.24, pinned by
            # tests/test_private_apis.py).
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            args = OTOTrainingArguments(output_dir=f"{Path(name).name}-oto")
        elif not isinstance(args, OTOTrainingArguments):
            values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
            args = OTOTrainingArguments(**values)
        super().__init__(model=model, args=args, **kwargs)
        if self.model_accepts_loss_kwargs and not self._loss_uses_num_items():
            # transformers takes any `**kwargs` forward as normalising its loss by `num_items_in_batch` and scales the
            # loss by the number of processes; a head that ignores it would train with a world-size-times larger step.
            # (`Trainer.compute_loss` passes it, `training_step` then skips dividing by the accumulation steps.)
            # Private `Trainer.model_accepts_loss_kwargs` (transformers 5.24, pinned by tests/test_private_apis.py);
            # upstream: huggingface/transformers#47688 (heads that declare **kwargs but drop the count).
            self.model_accepts_loss_kwargs = False
        self.example_inputs = example_inputs if example_inputs is not None else self._example_batch()
        if groups is None:
            # Groups are a property of the architecture: a training example cut to a few tokens finds the same ones
            # much faster than a full block (label propagation scales with the activations' size).
            traced = self.example_inputs if example_inputs is not None else one_short_example(self.example_inputs, 32)
            groups = discover_groups(self.model, traced, prune_kinds=args.prune_kinds)
        self.groups = groups
        self.dense_params = count_parameters(self.model)
        try:
            self.dense_flops, self.group_flops = group_flop_costs(self.model, self.groups, self.example_inputs)
        except Exception as error:  # FLOP counting is informative unless it is the budget; checked in _check_budget
            logger.warning(f"Could not count FLOPs ({error}); `kept_flops` will not be logged.")
            self.dense_flops, self.group_flops = 0, [0] * len(self.groups)
        self.never_empty = bottleneck_families(self.model, self.groups, self.example_inputs) if self.groups else []
        if self.never_empty:
            logger.info(
                f"{len(self.never_empty)} families always keep a group (removing all of one disconnects the output): "
                + ", ".join(key[0][0] for key in self.never_empty),
                main_process_only=True,
            )
        # With `erase_operators`, whole sub-blocks compete with single groups (priced on the same example as groups).
        erasing = args.erase_operators and len(self.groups) > 0
        if erasing and self.is_fsdp_enabled:
            raise ValueError(
                "`erase_operators=True` does not work under FSDP2 yet (an operator's own tensors are sharded); train "
                "with DDP or one process, or set `erase_operators=False`."
            )
        self.operators = find_operators(self.model, self.groups, self.example_inputs) if erasing else []
        self.saliency = choose_saliency(args.dhspg_saliency, self.model, self.groups, erasing)
        if args.dhspg_saliency == "auto":
            logger.info(f"dhspg_saliency='auto': groups are ranked by '{self.saliency}'", main_process_only=True)
        self.teacher = None
        if teacher is not None:
            self.teacher = freeze(teacher)
        elif args.distillation != "off":
            self.teacher = load_teacher(args.distillation, self.accelerator.unwrap_model(self.model))
        self._num_training_steps: int | None = None
        self._last_log: tuple[float, int] | None = None
        self._check_budget()

    # ---- optimizer -----------------------------------------------------------------------------------------------
    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self._num_training_steps = num_training_steps
        super().create_optimizer_and_scheduler(num_training_steps)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Build DHSPG over the usual decay / no-decay parameter groups."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        args = self.args
        # transformers 5.23 may call create_optimizer() directly, after setting state.max_steps from the epochs.
        steps = self._num_training_steps or getattr(self.state, "max_steps", 0) or args.max_steps
        if steps is None or steps <= 0:
            raise ValueError(
                "OTOTrainer needs the number of training steps: set `max_steps` or a sized train dataset."
            )
        decay = set(self.get_decay_parameter_names(opt_model))
        named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
        param_groups = [
            {"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
        ]
        settings = {**args.dhspg_kwargs(steps), "saliency": self.saliency}
        flops = args.sparsity_budget == "flops"
        self.optimizer = DHSPG(
            [g for g in param_groups if g["params"]],
            self.groups,
            opt_model.named_parameters(remove_duplicate=False),
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
            group_costs=self.group_flops if flops else None,
            budget_total=float(self.dense_flops) if flops else None,
            never_empty=self.never_empty,
            operators=self.operators,
            importance_source=importance_source_for(self.saliency, opt_model, self.groups),
            **settings,
        )
        logger.info(
            f"DHSPG: {len(self.groups)} groups, target {args.target_sparsity} of {args.sparsity_budget}, partition at "
            f"step {settings['partition_steps']}, exact target by step {settings['pruning_end_steps']}",
            main_process_only=True,
        )
        return self.optimizer

    def _check_budget(self) -> None:
        if self.args.sparsity_budget != "flops" or not self.args.target_sparsity:
            return
        if not self.dense_flops:
            raise ValueError(
                "`sparsity_budget='flops'` needs the model's FLOPs, which could not be counted on the example inputs "
                "(see the warning above). Pass `example_inputs` that the model runs on, or use "
                "`sparsity_budget='params'`."
            )
        reachable = sum(self.group_flops) / self.dense_flops
        if self.args.target_sparsity > reachable:
            raise ValueError(
                f"`target_sparsity={self.args.target_sparsity}` of FLOPs cannot be met: removing every prunable group "
                f"removes {reachable:.1%} of the FLOPs. Lower the target or prune more kinds (`prune_kinds`)."
            )

    # ---- logging ---------------------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `group_sparsity`, `kept_params`, `kept_flops` (fractions of the dense model), the sparsity of each kind
        (`sparsity/head`, ...) and the zero groups the optimizer reached itself or the deadline forced
        (`dhspg/natural_zero`, `dhspg/forced_zero`) to the training logs; warn when the loss jumps as groups go."""
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps it
        if isinstance(optimizer, DHSPG) and "loss" in logs:
            zero = optimizer.zero_group_ids()
            logs["group_sparsity"] = round(len(zero) / max(len(self.groups), 1), 4)
            removed_params, removed_flops = self._removed_sizes(zero)
            logs["kept_params"] = round(1 - removed_params / self.dense_params, 4)
            if self.dense_flops:
                logs["kept_flops"] = round(1 - removed_flops / self.dense_flops, 4)
            totals = self.groups.counts()
            zero_kinds = Counter(self.groups[i].kind for i in zero)
            for kind, total in totals.items():
                logs[f"sparsity/{kind}"] = round(zero_kinds[kind] / total, 4)
            forced = optimizer.num_forced_zero_groups
            logs["dhspg/natural_zero"] = len(zero) - forced
            logs["dhspg/forced_zero"] = forced
            self._warn_on_loss_jump(float(logs["loss"]), len(zero))
        super().log(logs, start_time)

    def _removed_sizes(self, zero: list[int]) -> tuple[int, int]:
        """Parameters and FLOPs that the zero groups remove, and with `erase_operators` the operators that add nothing
        (erasing removes their own tensors too: norms, output biases)."""
        erased, narrowed = self._erased_and_narrowed(self.accelerator.unwrap_model(self.model), zero)
        params = sum(self.groups[i].num_params for i in narrowed) + sum(op.num_params for op in erased)
        flops = sum(self.group_flops[i] for i in narrowed) + sum(op.flops or 0 for op in erased)
        return params, flops

    def _erased_and_narrowed(self, model: nn.Module, zero: list[int]) -> tuple[list[Operator], list[int]]:
        """The operators of `model` that add nothing (erased, with their own tensors) and the zero groups outside
        them (sliced away)."""
        if not self.operators:
            return [], list(zero)
        erased = zero_operators(self.operators, zero, dict(model.named_parameters(remove_duplicate=False)))
        members = {i for op in erased for i in op.group_ids}
        return erased, [i for i in zero if i not in members]

    def _warn_on_loss_jump(self, loss: float, num_zero: int) -> None:
        """Log a warning when the training loss rose by half or more over an interval in which groups became zero."""
        if self._last_log is not None:
            previous_loss, previous_zero = self._last_log
            if num_zero > previous_zero and loss > 1.5 * previous_loss + 0.05:
                logger.warning(
                    f"Step {self.state.global_step}: the training loss rose from {previous_loss:.4f} to {loss:.4f} "
                    f"while {num_zero - previous_zero} groups became zero. Prune more slowly (a longer window, more "
                    "`num_partition_periods`) or to a lower target.",
                    main_process_only=True,
                )
        self._last_log = (loss, num_zero)

    # ---- distillation ----------------------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The task loss, mixed with the distillation loss when a teacher is set (`args.distillation`)."""
        if self.teacher is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        args = self.args
        hidden = args.distillation_hidden_weight > 0
        if hidden:
            inputs = {**inputs, "output_hidden_states": True}
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        device = next(model.parameters()).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        features = {k: v for k, v in inputs.items() if k not in _LABEL_NAMES and k not in (self.label_names or [])}
        with torch.no_grad(), self.compute_loss_context_manager():
            teacher_outputs = self.teacher(**features)
        distil = distillation_loss(
            outputs, teacher_outputs, args.distillation_temperature, args.distillation_hidden_weight
        )
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # transformers then leaves the loss undivided by the accumulation steps; the distillation term is a
            # per-batch mean, so it is divided here to weigh the same in every step. Private
            # `Trainer.current_gradient_accumulation_steps` (transformers 5.24, pinned by tests/test_private_apis.py).
            distil = distil / self.current_gradient_accumulation_steps
        loss = (1 - args.distillation_alpha) * loss + args.distillation_alpha * distil
        return (loss, outputs) if return_outputs else loss

    # ---- export ----------------------------------------------------------------------------------------------------
    def pruned_model(self) -> nn.Module | None:
        """A copy of the trained model with its zero groups sliced away (outputs checked against the trained model),
        and, with `erase_operators`, the operators that add nothing (all their groups and own tensors zero) erased.

        Its pruning record also holds the run's settings (`training_settings`), so cards of the saved folder show them.
        Under FSDP2 the model is first gathered on the main process (every process must call this), and the other
        processes get `None`.
        """
        model = gather_full_model(self.accelerator.unwrap_model(self.model))
        if model is None:
            return None
        ids = self.groups.zero_group_ids(model)
        inputs = to_device(self.example_inputs, device_of(model))
        erased, narrowed = self._erased_and_narrowed(model, ids)  # erasing removes the members with their modules
        pruned = construct_subnet(model, self.groups, narrowed, example_inputs=inputs, allow_empty_layers=True)
        if erased:
            pruned = erase_operators(pruned, erased, inputs, inplace=True, zero_first=False)
        # the saliency that ranked the groups, "auto" resolved
        pruned.oto_pruning.training_settings = {**training_settings(self.args), "dhspg_saliency": self.saliency}
        return pruned

    def save_pruned(
        self,
        output_dir: str | Path | None = None,
        overwrite: bool = False,
        model_card: bool = True,
        format: str = "auto",
        **options: Any,
    ) -> Path:
        """Slice the zero groups away and `save_pruned` the result (with the processing class) on the main process,
        then write its model card with `create_model_card`, as TRL's trainers do when they save.

        Args:
            output_dir (`str` or `Path`, *optional*, defaults to `<args.output_dir>/pruned`): where to write (for a
                format that writes one file, e.g. `"gguf"`, the file's path).
            overwrite (`bool`, *optional*, defaults to `False`): replace a non-empty folder.
            model_card (`bool`, *optional*, defaults to `True`): write `README.md` and `kept_per_layer.png` into it
                (formats that write a folder only).
            format (`str`, *optional*, defaults to `"auto"`): the export format, as for `oto_hf.save_pruned`
                (`"auto"`, `"stock"`, `"decilm"`, `"gguf"`, or one registered with `register_format`).
            **options: the format's options (e.g. `dtype="f16"` for `"gguf"`).

        Returns:
            `Path`: the folder written, as `oto_hf.save_pruned` returns it (on every process). `pruned_model()` gives
            the sliced model itself; `AutoModel*.from_pretrained(folder)` loads it back.
        """
        pruned = self.pruned_model()
        output_dir = Path(output_dir or Path(self.args.output_dir) / "pruned")
        if self.is_world_process_zero():
            save_pruned(pruned, output_dir, self.processing_class, overwrite, format, **options)
            if model_card and get_format(format).writes == "folder":
                self.create_model_card(output_dir=output_dir)
        self.accelerator.wait_for_everyone()
        return output_dir

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        *,
        output_dir: str | Path | None = None,
        **card_fields: Any,
    ) -> Path | None:
        """Write the model card of a folder written by `save_pruned` (`README.md` and `kept_per_layer.png`, by
        `oto_hf.model_card.write_model_card`) from the folder's pruning record and this run's arguments.

        `save_pruned` calls it, and so does `Trainer.push_to_hub` (with `model_name` and `tags`); it writes on the main
        process only. When the default `output_dir` holds no saved model yet (e.g. `push_to_hub` before any
        `save_pruned`), the `Trainer`'s own card of `args.output_dir` is written instead.

        Args:
            model_name (`str`, *optional*): the card's title; defaults to "<base model> pruned with OTO".
            dataset_name (`str`, *optional*): Hub id of the training dataset.
            tags (`str` or `list[str]`, *optional*): Hub tags added to oto_hf's own.
            output_dir (`str` or `Path`, *optional*, defaults to `<args.output_dir>/pruned`): the pruned folder.
            **card_fields: the other fields of `oto_hf.model_card.CardInputs` (`eval_results`, `dense_eval_results`,
                `latency_ratio`, `task`, `license`, ...). `base_model` defaults to the Hub id the model was loaded
                from (none for a local folder), `training_args` to `self.args`.

        Returns:
            `Path`: the `README.md` written; `None` on the other processes and when the `Trainer`'s card was written.

        Example:
        ```python
        >>> folder = trainer.save_pruned(model_card=False)
        >>> trainer.create_model_card(dataset_name="rajpurkar/squad", eval_results=trainer.evaluate())
        ```
        """
        if not self.is_world_process_zero():
            return None
        folder = Path(output_dir) if output_dir is not None else Path(self.args.output_dir) / "pruned"
        if output_dir is None and not (folder / "config.json").is_file():
            super().create_model_card(model_name=model_name, dataset=dataset_name, tags=tags, **card_fields)
            return None
        card_fields.setdefault("base_model", self._base_model_id())
        card_fields.setdefault("training_args", self.args)
        return write_model_card(folder, model_name=model_name, dataset=dataset_name, tags=tags, **card_fields)

    # ---- helpers ---------------------------------------------------------------------------------------------------
    def _base_model_id(self) -> str | None:
        """The Hub id the model was loaded from, for the card's `base_model`; `None` for a local folder or no name."""
        name = getattr(getattr(self.accelerator.unwrap_model(self.model), "config", None), "name_or_path", "")
        if not name or Path(name).expanduser().exists():
            return None
        try:
            validate_repo_id(name)
        except HFValidationError:
            return None
        return name

    def _first_examples(self, count: int = 1) -> dict[str, torch.Tensor] | None:
        """The first `count` training examples, collated, on the model's device (None if unavailable)."""
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "__getitem__") or len(dataset) < count:
            return None
        try:
            batch = dict(self.data_collator([dataset[i] for i in range(count)]))
        except Exception:  # a collator needing more examples, or a dataset with columns the collator rejects
            return None
        batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        return to_device(batch, device_of(self.model)) if batch else None

    def _example_batch(self) -> Any:
        """One collated training example without labels, else inputs derived from the model's config."""
        batch = self._first_examples()
        if batch is not None:
            labels = set(self.label_names or []) | _LABEL_NAMES
            batch = {k: v for k, v in batch.items() if k not in labels}
            if batch:
                return batch
        return default_example_inputs(self.model)

    @torch.no_grad()
    def _loss_uses_num_items(self) -> bool:
        """Whether the model's loss changes with `num_items_in_batch` (checked on two training examples)."""
        batch = self._first_examples(2)
        if batch is None:
            return True  # cannot tell: keep transformers' choice
        losses = []
        with eval_mode(self.model):
            for count in (1, 7):
                try:
                    output = self.model(**batch, num_items_in_batch=torch.tensor(count))
                except TypeError:
                    return False
                loss = output["loss"] if isinstance(output, dict) else output[0]
                losses.append(loss)
        return not torch.equal(losses[0], losses[1])


_LABEL_NAMES = {"labels", "label", "start_positions", "end_positions"}
