"""The export formats `save_pruned(..., format=...)` knows, by name."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from transformers import PreTrainedModel

from .report import ExportReport


class Writer(Protocol):
    """Writes `model` into the empty directory `staging` and says what it wrote."""

    def __call__(self, model: PreTrainedModel, staging: Path, tokenizer: Any = None, **options: Any) -> ExportReport:
        """Write the format; raise `ValueError` saying what the format cannot hold and what to do instead."""


@dataclass(frozen=True)
class ExportFormat:
    """A registered format: its writer, whether it writes a folder or one file, and a one-line description."""

    name: str
    writer: Writer
    writes: Literal["folder", "file"]
    description: str

    def option_names(self) -> list[str]:
        """The keyword options the writer takes (those after `model`, `staging` and `tokenizer`)."""
        parameters = list(inspect.signature(self.writer).parameters.values())[3:]
        return [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise a `ValueError` naming any option this format does not take."""
        unknown = sorted(set(options) - set(self.option_names()))
        if unknown:
            allowed = ", ".join(self.option_names()) or "none"
            raise ValueError(
                f"save_pruned(format={self.name!r}) got unknown option(s) {unknown}; this format takes: {allowed}."
            )


_FORMATS: dict[str, ExportFormat] = {}


def register_format(
    name: str, writer: Writer, *, description: str, writes: Literal["folder", "file"] = "folder"
) -> None:
    """Register an export format, so that `save_pruned(model, path, format=name, **options)` writes it.

    To add a format: write a module `oto_hf/export/<name>.py` with a writer
    `write_<name>(model, staging, tokenizer=None, *, <your options>) -> ExportReport` that writes into `staging` (an
    empty directory that `save_pruned` creates, then renames into place, or removes if the writer raises), and raises
    a `ValueError` for whatever the format cannot hold exactly. Then call `register_format` for it in
    `oto_hf/export/__init__.py`. A format that writes a single file (`writes="file"`) writes exactly one file into
    `staging`; `save_pruned` moves that file to the path it was given.

    Args:
        name (`str`): the value of `format=` (lower case).
        writer (`Writer`): the function described above; its keyword options are the format's options.
        description (`str`): one line: what the format is and what it can express (shown in error messages).
        writes (`str`, *optional*, defaults to `"folder"`): `"folder"` or `"file"`.
    """
    if writes not in ("folder", "file"):
        raise ValueError(f"`writes` must be 'folder' or 'file', got {writes!r}.")
    if name in _FORMATS and _FORMATS[name].writer is not writer:
        raise ValueError(f"An export format named {name!r} is already registered ({_FORMATS[name].description}).")
    _FORMATS[name] = ExportFormat(name=name, writer=writer, writes=writes, description=description)


def get_format(name: str) -> ExportFormat:
    """The registered format `name`; a `ValueError` listing the registered formats if there is none."""
    if name not in _FORMATS:
        listed = "; ".join(f"{f.name!r}: {f.description}" for f in _FORMATS.values())
        raise ValueError(f"Unknown export format {name!r}. Registered formats: {listed}.")
    return _FORMATS[name]


def registered_formats() -> list[str]:
    """The names of the registered formats, in registration order."""
    return list(_FORMATS)
