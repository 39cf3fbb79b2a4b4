# Two commands do all set-up on a fresh machine (Python >= 3.10 with pip and venv):
#   make demo   create/reuse .venv, install robustkit, run the main job on the bundled default
#   make test   create/reuse .venv, install robustkit + test tools, run the test suite
# Data and models that cannot be downloaded here are read from ROBUSTKIT_SHARED (default ../shared).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.robustkit-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check
ROBUSTKIT_SHARED ?= $(abspath ../shared)
PYTEST_ARGS ?=
export ROBUSTKIT_SHARED

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml requirements/constraints.txt requirements/torchattacks.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c requirements/constraints.txt torch
	$(PIP) install -q -c requirements/constraints.txt -e '.[test]'
	$(PIP) install -q --no-deps -r requirements/torchattacks.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/robustkit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
