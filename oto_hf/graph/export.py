"""Tracing a model with `torch.export`, and example inputs derived from its config."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ..utils import as_args_kwargs, device_of, eval_mode

DEFAULT_SEQUENCE_LENGTH = 8
DEFAULT_IMAGE_SIZE = 64


def default_example_inputs(model: nn.Module) -> dict[str, Any]:
    """Small inputs for `model`, built from its config: token ids for text models, `pixel_values` for vision ones.

    Tensors are created on the model's device, so a model built on the `meta` device gets meta inputs.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(
            f"Cannot derive example inputs for {type(model).__name__}: it has no `config`. Pass `example_inputs`, "
            "e.g. `discover_groups(model, example_inputs={'x': torch.randn(1, 16)})`."
        )
    device = device_of(model)
    main_input = getattr(model, "main_input_name", "input_ids")
    inputs: dict[str, Any] = {}
    if main_input == "pixel_values":
        size = getattr(config, "image_size", DEFAULT_IMAGE_SIZE)
        height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
        channels = getattr(config, "num_channels", 3)
        generator = torch.Generator().manual_seed(0)
        inputs["pixel_values"] = torch.randn(1, channels, height, width, generator=generator).to(device)
    elif main_input == "input_ids":
        vocab = getattr(config, "vocab_size", None) or 2
        length = min(
            DEFAULT_SEQUENCE_LENGTH, getattr(config, "max_position_embeddings", None) or DEFAULT_SEQUENCE_LENGTH
        )
        inputs["input_ids"] = (torch.arange(1, length + 1) % vocab).unsqueeze(0).to(device)
        takes_decoder_ids = "decoder_input_ids" in inspect.signature(model.forward).parameters
        if getattr(config, "is_encoder_decoder", False) and takes_decoder_ids:
            inputs["decoder_input_ids"] = inputs["input_ids"].clone()
    else:
        raise ValueError(
            f"Cannot derive example inputs for {type(model).__name__} (main input {main_input!r}). Pass "
            "`example_inputs` as a dict of keyword arguments for its forward."
        )
    return inputs


def export_model(model: nn.Module, example_inputs: Any) -> torch.export.ExportedProgram:
    """`torch.export` the model in eval mode (restoring its mode afterwards), with a clear error if tracing fails.

    A model that can return a cache of keys and values is traced with `use_cache=False` unless the inputs set it: a
    cache object cannot be exported, and it changes no layer.
    """
    args, kwargs = as_args_kwargs(example_inputs)
    kwargs = _cache_off(model, args, kwargs)
    with eval_mode(model):
        try:
            return torch.export.export(model, args, kwargs, strict=False)
        except Exception as error:  # torch.export raises many types; re-raise with where and what to do about it
            where = failing_module(model, error)
            inside = f" inside module '{where[0]}' ({where[1]})" if where else ""
            raise TracingError(
                f"torch.export could not trace {type(model).__name__}{inside}: {type(error).__name__}: "
                f"{_first_lines(error)}\n"
                "oto_hf discovers groups from the exported graph, so it cannot analyse this model as it is. Check "
                "that `example_inputs` are valid inputs for the model's forward (a dict of keyword arguments). If "
                "the module itself cannot be traced (data-dependent Python control flow, unsupported tensor ops), "
                "wrap it in a custom op (`torch.library.custom_op`) and register a rule for that op with "
                "`oto_hf.register_op_rule(op, oto_hf.rules.unsupported)`: its tensors are then left out of every "
                "group."
            ) from error


def _cache_off(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    parameters = inspect.signature(model.forward).parameters
    passes_on = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    takes = "use_cache" in parameters or (passes_on and hasattr(getattr(model, "config", None), "use_cache"))
    positional = [
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if not takes or "use_cache" in kwargs or "use_cache" in positional[: len(args)]:
        return kwargs
    return {**kwargs, "use_cache": False}


class TracingError(RuntimeError):
    """`torch.export` failed on the model: the message names the module where it failed and what to do."""


def failing_module(model: nn.Module, error: BaseException) -> tuple[str, str] | None:
    """(path, class name) of the innermost submodule of `model` whose code was running when `error` was raised."""
    names = {id(module): name for name, module in model.named_modules()}
    found = None
    traceback = error.__traceback__
    while traceback is not None:
        owner = traceback.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            found = (names[id(owner)] or "<root>", type(owner).__name__)
        traceback = traceback.tb_next
    return found


def _first_lines(error: BaseException, count: int = 3) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return "\n".join(lines[:count])
