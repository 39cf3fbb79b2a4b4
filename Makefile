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

.PHONY: demo test install clean browser-deps

# The browser tests (tests/test_leaderboard_site.py) drive Debian's headless Chromium with Selenium.
# Installed here only when missing, and only where we may (root with apt-get); elsewhere those tests
# skip with the reason, except under CI=true, where they fail.
BROWSER_PKGS := chromium chromium-driver

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml requirements/constraints.txt requirements/torchattacks.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c requirements/constraints.txt torch
	$(PIP) install -q -c requirements/constraints.txt -e '.[test]'
	$(PIP) install -q --no-deps -r requirements/torchattacks.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/robustkit demo

browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(BROWSER_PKGS) for the browser tests"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(BROWSER_PKGS); \
	else \
		echo "note: chromium/chromedriver are missing and cannot be installed here (needs root and apt-get):" \
		     "the browser tests will skip (and fail under CI=true)"; \
	fi

test: $(STAMP) browser-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
