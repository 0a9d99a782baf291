# Two commands: `make test` (lint, format check and the test suite) and `make demo` (the main job). Each builds its own virtualenv.
# CUDA users: make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

STAMP := $(VENV)/.oto_hf-installed

.PHONY: test demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/python scripts/demo.py

clean:
	rm -rf $(VENV) build *.egg-info
