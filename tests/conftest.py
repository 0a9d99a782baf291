"""Test defaults: offline, quiet, seeded, CPU; `scripts/` importable as `python scripts/<name>.py` sees it."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from tests.utils.paths import SCRIPTS_DIR  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

# The scripts import their sibling modules (`import utils_common`, `from assets import ...`, `from metrics import ...`)
# from `scripts/`, which `python scripts/<name>.py` puts first on `sys.path`; the tests do the same once, here.
SCRIPTS = str(SCRIPTS_DIR)
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture()
def one_thread():
    """One intra-op thread: tiny models gain nothing from more, and 2 threads on 2 busy cores can be 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
