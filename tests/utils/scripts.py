"""The example scripts under `scripts/`, imported as modules for their tests."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from tests.utils.paths import SCRIPTS_DIR

SCRIPTS = SCRIPTS_DIR


def load_script(name: str) -> ModuleType:
    """`scripts/<name>.py` as the module `<name>`, the name its sibling scripts import it by (tests/conftest.py puts
    `scripts/` on `sys.path`, as `python scripts/<name>.py` does)."""
    module = importlib.import_module(name)
    if Path(module.__file__).resolve() != SCRIPTS / f"{name}.py":
        raise ImportError(f"`import {name}` found {module.__file__}, not {SCRIPTS / f'{name}.py'}.")
    return module
