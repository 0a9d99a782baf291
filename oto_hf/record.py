"""`PruningRecord`: what `construct_subnet` removed, the sizes before and after, and what `save_pruned` needs.

This module is the only place the record's keys are spelled. `construct_subnet` attaches a record to the model it
returns (`model.oto_pruning`); `save_pruned` writes it, without the tensor shapes, into `config.json` under
`oto_pruning_summary`; reports and model cards read it back with `PruningRecord.from_model_or_config`.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__
from .graph.groups import ALL_KINDS, GROUP_KINDS

SUMMARY_KEY = "oto_pruning_summary"  # the key of the record in a saved config.json
# Keys written for readers of config.json but computed from the other fields, so not read back.
_DERIVED_KEYS = ("removed_groups",)
_SHAPE_KEYS = ("tensor_shapes", "module_attributes")


@dataclass
class LayerWidths:
    """Kept and total groups of one family: the heads of one attention block, the neurons of one FFN, ...

    With grouped-query attention a layer has two families: its query heads (`"head"`) and its KV groups
    (`"kv_head"`); the KV-head count of a layer whose KV groups cannot be removed (MQA) is not listed.

    Args:
        kind (`str`): `"head"`, `"kv_head"`, `"neuron"` or `"channel"`.
        layer (`int`, *optional*): ordinal of the block, `None` outside numbered blocks.
        module (`str`): module path of the block, e.g. `"encoder.layer.3"`; `""` for the model itself.
        total (`int`): groups before this pruning.
        kept (`int`): groups left after it, `padded` included.
        padded (`int`, *optional*, defaults to 0): kept groups that are zero, kept only so that every KV group of the
            layer has as many query heads (`oto_hf.graph.nesting`).
    """

    kind: str
    layer: int | None
    module: str
    total: int
    kept: int
    padded: int = 0

    @property
    def removed(self) -> int:
        """Groups removed from this family."""
        return self.total - self.kept

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "the pruning record") -> LayerWidths:
        """A `LayerWidths` from its `to_dict` form; a missing required key is a `ValueError`, unknown ones warn."""
        names = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        if not isinstance(data, Mapping) or not set(names) <= set(data):
            raise ValueError(f"{source} has no valid `layers` list of {{{', '.join(names)}}} entries, got {data!r}.")
        return cls(**_known(cls, data, f"a `layers` entry of {source}"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PruningRecord:
    """What one `construct_subnet` call removed, with the model's size before and after.

    Args:
        layers (`list[LayerWidths]`): kept and total groups of every family (layer and kind) of the groups.
        params_before (`int`, *optional*): parameters before pruning.
        params_after (`int`, *optional*): parameters after pruning.
        flops_before (`int`, *optional*): FLOPs of one forward on the example inputs before pruning (`None` when the
            subnet was not verified, e.g. on the `meta` device).
        flops_after (`int`, *optional*): the same after pruning.
        tensor_shapes (`dict[str, list[int]]`): new shape of every sliced parameter and buffer, by name, including
            those of earlier prunings of the same model. `save_pruned` writes them into `oto_*` configs.
        module_attributes (`dict[str, dict[str, Any]]`): width attributes changed on each module (e.g.
            `num_attention_heads`), by module name, including earlier prunings.
        dense_config (`dict`, *optional*): the unpruned model's config, set by `save_pruned` (the reference for
            `oto_hf.report.dense_reference`).
        training_settings (`dict`, *optional*): the OTO and main optimisation settings of the run, when known
            (`OTOTrainer.pruned_model` fills them; never secrets such as `hub_token`).
        oto_hf_version (`str`, *optional*): the oto_hf version that wrote the record; `None` for records saved
            before oto_hf recorded it.

    Example:
    ```python
    >>> pruned = construct_subnet(model, groups, [0, 5])
    >>> record = pruned.oto_pruning
    >>> record.params_before, record.params_after, record.removed_groups
    (1024, 896, {'head': 1, 'neuron': 1, 'channel': 0})
    >>> PruningRecord.from_model_or_config("outputs/pruned")  # the record of a saved folder
    ```
    """

    layers: list[LayerWidths] = field(default_factory=list)
    params_before: int | None = None
    params_after: int | None = None
    flops_before: int | None = None
    flops_after: int | None = None
    tensor_shapes: dict[str, list[int]] = field(default_factory=dict, repr=False)
    module_attributes: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    dense_config: dict[str, Any] | None = field(default=None, repr=False)
    training_settings: dict[str, Any] | None = field(default=None, repr=False)
    oto_hf_version: str | None = __version__

    @property
    def removed_groups(self) -> dict[str, int]:
        """Groups removed per kind (every kind of `GROUP_KINDS` listed, zeros included; `"kv_head"` when the model
        has KV groups)."""
        present = {layer.kind for layer in self.layers}
        kinds = [kind for kind in ALL_KINDS if kind in GROUP_KINDS or kind in present]
        return {kind: sum(layer.removed for layer in self.layers if layer.kind == kind) for kind in kinds}

    def to_dict(self, *, shapes: bool = True) -> dict[str, Any]:
        """The record as JSON-ready data, with `removed_groups` spelled out.

        Args:
            shapes (`bool`, *optional*, defaults to `True`): include `tensor_shapes` and `module_attributes`.
                `save_pruned` leaves them out of the summary: an `oto_*` config records them under its own keys,
                and a stock config implies them.
        """
        data = dataclasses.asdict(self)
        data["removed_groups"] = self.removed_groups
        if not shapes:
            for key in _SHAPE_KEYS:
                data.pop(key)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "the pruning record") -> PruningRecord:
        """Read a record written by `to_dict`, by this or an earlier oto_hf version.

        Unknown keys (from a newer oto_hf) are dropped with a warning; a missing `oto_hf_version` reads as `None`.
        A record without a valid `layers` list is a `ValueError`.

        Args:
            data (`dict`): the record, e.g. `config.json`'s `oto_pruning_summary`.
            source (`str`, *optional*): where `data` comes from, for error messages.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{source} must be a dict, got {type(data).__name__}.")
        values = _known(cls, {k: v for k, v in data.items() if k not in _DERIVED_KEYS}, source)
        layers = values.get("layers")
        if not isinstance(layers, list):
            names = ", ".join(f.name for f in dataclasses.fields(LayerWidths))
            raise ValueError(f"{source} has no valid `layers` list of {{{names}}} entries.")
        values["layers"] = [LayerWidths.from_dict(layer, source=source) for layer in layers]
        values.setdefault("oto_hf_version", None)
        return cls(**values)

    @classmethod
    def from_model_or_config(cls, source: Any) -> PruningRecord | None:
        """The pruning record of a model, a config, a `config.json` dict or a saved folder; `None` if it has none.

        A model's own record (`model.oto_pruning`, set by `construct_subnet`) comes first; otherwise the summary that
        `save_pruned` wrote into its config (e.g. a model reloaded with `from_pretrained`). Summaries written by
        earlier oto_hf versions read the same.

        Args:
            source: a model, a `PretrainedConfig`, the dict of a `config.json`, or a folder (or `config.json` path)
                written by `save_pruned`.
        """
        if isinstance(source, PruningRecord):
            return source
        if isinstance(source, (str, Path)):
            path = Path(source)
            path = path / "config.json" if path.is_dir() else path
            try:
                source = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise ValueError(f"Cannot read the pruning record from {str(path)!r}: {error}") from error
        if isinstance(source, Mapping):
            summary = source.get(SUMMARY_KEY)
        else:
            record = getattr(source, "oto_pruning", None)
            if isinstance(record, PruningRecord):
                return record
            config = getattr(source, "config", source)  # a model's config, or the config itself
            summary = getattr(config, SUMMARY_KEY, None)
        return None if summary is None else cls.from_dict(summary, source=f"`{SUMMARY_KEY}` in config.json")


def _known(cls: type, data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The entries of `data` that are fields of `cls`; the others are dropped with a warning."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in data if key not in names)
    if unknown:
        warnings.warn(
            f"Ignoring unknown keys {unknown} in {source}: it was probably written by a newer oto_hf than this one "
            f"({__version__}).",
            stacklevel=3,
        )
    return {key: value for key, value in data.items() if key in names}
