"""`read_pruned_folder`: read and check a folder written by `save_pruned`, for cards, evaluation and uploads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .record import SUMMARY_KEY, PruningRecord

# The weight files a saved transformers model may have (safetensors, sharded or not, or PyTorch pickles).
WEIGHT_PATTERNS = ("*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")
_HOW_TO_SAVE = (
    "Save the model that `construct_subnet` (or `OTOTrainer.pruned_model()`) returns with `oto_hf.save_pruned`"
)


@dataclass(frozen=True)
class PrunedFolder:
    """A folder written by `save_pruned`, as read by `read_pruned_folder`.

    Args:
        path (`Path`): the folder.
        config (`dict`): its `config.json`.
        record (`PruningRecord`, *optional*): the pruning record of `config.json`; `None` for a folder without one
            (only when `read_pruned_folder(..., require_record=False)`).
    """

    path: Path
    config: dict[str, Any]
    record: PruningRecord | None


def read_pruned_folder(
    folder: str | Path, *, require_record: bool = True, require_weights: bool = True
) -> PrunedFolder:
    """Read a folder written by `save_pruned` (or `OTOTrainer.save_pruned`) and check that it is one.

    Every problem is a `ValueError` that names the folder, what is missing and how to fix it.

    Args:
        folder (`str` or `Path`): the folder.
        require_record (`bool`, *optional*, defaults to `True`): refuse a folder whose `config.json` has no pruning
            record (`oto_pruning_summary`), e.g. a stock model saved with `save_pretrained`.
        require_weights (`bool`, *optional*, defaults to `True`): refuse a folder without weight files.

    Returns:
        `PrunedFolder`: the folder's path, its parsed `config.json` and its `PruningRecord`.

    Example:
    ```python
    >>> saved = read_pruned_folder("outputs/bert-squad-pruned")
    >>> saved.config["model_type"], saved.record.params_after
    ```
    """
    if not isinstance(folder, (str, Path)):
        raise TypeError(f"The folder must be a str or Path, got {type(folder).__name__}.")
    path = Path(folder)
    if not path.exists():
        raise ValueError(
            f"Folder {str(path)!r} does not exist. Pass the folder written by `oto_hf.save_pruned` (the run scripts "
            "write it to `<output_dir>/pruned`)."
        )
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is a file, not a folder. Pass the folder that holds config.json.")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{str(path)!r} has no config.json, so it is not a saved transformers model. {_HOW_TO_SAVE}.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(config_file)!r} is not valid JSON ({error}). {_HOW_TO_SAVE} again.") from error
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{str(config_file)!r} has no `model_type`, so it is not a transformers config.")
    if require_weights and not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ValueError(f"{str(path)!r} has config.json but no weights (model.safetensors). {_HOW_TO_SAVE} again.")
    record = PruningRecord.from_model_or_config(config)
    if record is None and require_record:
        saved_by = "was saved by oto_hf before pruning" if "oto_hf_version" in config else "was not saved by oto_hf"
        raise ValueError(
            f"{str(path)!r} holds a {config['model_type']!r} model that {saved_by}: its config.json has no "
            f"`{SUMMARY_KEY}`, so there is no pruning record. {_HOW_TO_SAVE}."
        )
    return PrunedFolder(path, config, record)
