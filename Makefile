# `make run` runs the main job on the embedded default; `make test` runs the whole test suite.
# Each creates .venv when missing and installs what it needs first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test install lint

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $$(grep -E '^torch==' requirements.txt)
	$(BIN)/pip install -q -e '.[dev]' $$(grep -vE '^(#|torch==)|no-deps' requirements.txt | sed 's/#.*//' | grep .)
	$(BIN)/pip install -q --no-deps $$(grep -E 'no-deps' requirements.txt | grep -v '^#' | sed 's/#.*//')
	touch $(STAMP)

# The test suite also needs llama-cpp-python's OpenAI-compatible server (a real server for the HTTP
# backend's tests). It compiles llama.cpp from source: ~20 minutes on 2 cores the first time, then pip
# reuses its wheel cache.
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,server]'
	touch $(TEST_STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/lettingo experiment=quickstart

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

# Style and the layering contracts of DESIGN.md (pyproject.toml [tool.importlinter]); CI runs it after the tests.
lint: $(STAMP)
	$(BIN)/ruff check lettingo tests experiments sweeps benchmarks
	$(BIN)/lint-imports
