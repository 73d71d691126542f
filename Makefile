# `make run` runs the main job on the embedded default; `make test` runs the whole test suite.
# Each creates .venv when missing and installs what it needs first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# setuptools warns on every editable install that a folder named like the package may shadow it: that is the
# point of an editable install here, so the install lines silence that one warning (nothing else).
QUIET_EDITABLE := PYTHONWARNINGS="ignore:Editable installation"
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test install lint

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $$(grep -E '^torch==' requirements.txt)
	$(QUIET_EDITABLE) $(BIN)/pip install -q -e '.[dev]' $$(grep -vE '^(#|torch==)|no-deps' requirements.txt | sed 's/#.*//' | grep .)
	$(BIN)/pip install -q --no-deps $$(grep -E 'no-deps' requirements.txt | grep -v '^#' | sed 's/#.*//')
	touch $(STAMP)

# The test suite also needs llama-cpp-python's OpenAI-compatible server (a real server for the HTTP
# backend's tests). It compiles llama.cpp from source (~5-20 minutes on 2 cores) the first time, for
# any x86-64 CPU with AVX2 rather than for this one: in a CI run whose install reused pip's wheel cache, the
# server loaded the model and then died on the first request, most likely a native build (GGML_NATIVE, pip's
# default) from another CPU. The wheel is kept in its own folder (rename it when LLAMA_FLAGS change) and
# installed from there, so pip's cached wheel is never picked instead.
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_FLAGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF
LLAMA_WHEELS := $(HOME)/.cache/lettingo/wheels/llama-cpp-avx2
$(TEST_STAMP): $(STAMP)
	ls $(LLAMA_WHEELS)/$(subst ==,-,$(subst -,_,$(LLAMA_CPP)))-*.whl > /dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_FLAGS)" $(BIN)/pip wheel -q --no-cache-dir --no-deps -w $(LLAMA_WHEELS) '$(LLAMA_CPP)'
	$(QUIET_EDITABLE) $(BIN)/pip install -q --find-links $(LLAMA_WHEELS) -e '.[dev,server]' '$(LLAMA_CPP)'
	touch $(TEST_STAMP)

install: $(STAMP)

# The quickstart (the paper's loop at a demonstration size), then a small positive control: the loop raising a
# reward whose answer is known, with its report (outputs/reports/positive_control.md).
run: $(STAMP)
	$(BIN)/lettingo experiment=quickstart
	$(BIN)/lettingo experiment=positive_control_quick
	$(BIN)/python experiments/positive_control.py outputs/positive_control_quick/latest --out outputs/reports

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

# Style and the layering contracts of DESIGN.md (pyproject.toml [tool.importlinter]); CI runs it after the tests.
lint: $(STAMP)
	$(BIN)/ruff check lettingo tests experiments sweeps benchmarks
	$(BIN)/lint-imports
