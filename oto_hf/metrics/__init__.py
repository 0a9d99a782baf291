"""Metrics through the `evaluate` library: the Hub's module when reachable, else the copy shipped with oto_hf.

Each shipped module lives in `oto_hf/metrics/<name>/<name>.py`, in the layout `evaluate.load(<local path>)` reads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import evaluate


logger = logging.getLogger(__name__)

LOCAL_METRICS = Path(__file__).resolve().parent


def local_metric_path(name: str) -> Path:
    """Folder of the metric module shipped with oto_hf (raises if there is none)."""
    path = LOCAL_METRICS / name
    if not (path / f"{name}.py").is_file():
        shipped = sorted(p.name for p in LOCAL_METRICS.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"oto_hf ships no metric module {name!r}; shipped: {shipped}.")
    return path


def load_metric(name: str, prefer_local: bool | None = None) -> tuple[evaluate.EvaluationModule, str]:
    """`evaluate.load(name)` from the Hub, falling back to the module shipped with oto_hf when offline.

    Args:
        name (`str`): e.g. `"squad"`, `"squad_v2"`, `"accuracy"`, `"f1"`.
        prefer_local (`bool`, *optional*): skip the Hub. Defaults to `True` when `HF_HUB_OFFLINE` or
            `HF_EVALUATE_OFFLINE` is set.

    Returns:
        `(module, source)` where `source` says which module was used (the Hub id or the local path).
    """
    if prefer_local is None:
        prefer_local = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"))
    if not prefer_local:
        try:
            return evaluate.load(name), f"evaluate-metric/{name} (Hub)"
        except Exception as error:  # no network, Hub down, or a blocked host: fall back to the shipped copy
            logger.warning("Could not load metric %r from the Hub (%s); using the copy shipped with oto_hf.", name, error)
    path = local_metric_path(name)
    return evaluate.load(str(path)), f"{path} (shipped with oto_hf)"
