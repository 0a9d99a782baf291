"""Metrics for the example scripts through the `evaluate` library: the Hub's module when reachable, else a local copy.

Each local copy lives in `scripts/metrics/<name>/<name>.py`, the layout `evaluate.load(<local path>)` reads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import evaluate

logger = logging.getLogger(__name__)

LOCAL_METRICS = Path(__file__).resolve().parent
LOCAL_SOURCE = "local copy"  # how `load_metric` names a module loaded from this folder


def local_metric_path(name: str) -> Path:
    """Folder of the local copy of the metric module `name` (raises if there is none)."""
    path = LOCAL_METRICS / name
    if not (path / f"{name}.py").is_file():
        local = sorted(p.name for p in LOCAL_METRICS.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"No local metric module {name!r} in {LOCAL_METRICS}; there are: {local}.")
    return path


def load_metric(name: str, prefer_local: bool | None = None) -> tuple[evaluate.EvaluationModule, str]:
    """`evaluate.load(name)` from the Hub, falling back to the local copy when offline.

    Args:
        name (`str`): e.g. `"squad"`, `"squad_v2"`, `"accuracy"`, `"f1"`.
        prefer_local (`bool`, *optional*): skip the Hub. Defaults to `True` when `HF_HUB_OFFLINE` or
            `HF_EVALUATE_OFFLINE` is set.

    Returns:
        `(module, source)` where `source` says which module was used: `"evaluate-metric/<name> (Hub)"` or
        `"<path> (local copy)"`.
    """
    if prefer_local is None:
        prefer_local = any(
            os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE")
        )
    if not prefer_local:
        try:
            return evaluate.load(name), f"evaluate-metric/{name} (Hub)"
        except Exception as error:  # no network, Hub down, or a blocked host: fall back to the local copy
            logger.warning("Could not load metric %r from the Hub (%s); using the local copy.", name, error)
    path = local_metric_path(name)
    return evaluate.load(str(path)), f"{path} ({LOCAL_SOURCE})"


def metric_sentence(sources: dict[str, str]) -> str:
    """Where the metrics came from (name -> `load_metric` source), for model cards, without local paths."""
    parts = [
        f"{name} ({'a local copy of the Hub module' if source.endswith(f'({LOCAL_SOURCE})') else source})"
        for name, source in sources.items()
    ]
    return f"Computed with the `evaluate` modules {', '.join(parts)}."
