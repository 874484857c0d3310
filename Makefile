# Developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
MODEL  := qwen2.5-coder-0.5b
# the end-to-end tests also run the other small models: each family's format on a real model
TEST_MODELS := qwen2.5-coder-0.5b smollm2-135m qwen2.5-coder-1.5b
# LiteLLM, for bench/gateway.py only: its own venv, so its dependencies stay out of .venv
BENCH_VENV := .venv-bench
LITELLM    := litellm[proxy]==1.106.2
HOST   := 127.0.0.1
PORT   := 8000

.PHONY: setup model test-models run test lint bench-gateway

setup: $(STAMP)

# Re-run only when the dependencies or the llama.cpp installer change (or the venv is new).
$(STAMP): pyproject.toml scripts/install_llama_cpp.sh
	@test -x $(PY) || { echo "creating $(VENV)"; python3 -m venv $(VENV); }
	$(PY) -m pip install --disable-pip-version-check --quiet --upgrade pip
	bash scripts/install_llama_cpp.sh $(PY)
	$(PY) -m pip install --disable-pip-version-check --quiet -e '.[dev]'
	@touch $@

model: setup
	$(VENV)/bin/midtier models pull $(MODEL)

test-models: setup
	@for m in $(TEST_MODELS); do $(VENV)/bin/midtier models pull $$m; done

run: setup model
	$(VENV)/bin/midtier serve --model $(MODEL) --host $(HOST) --port $(PORT)

test: setup test-models
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check src tests
	MYPYPATH=src $(PY) -m mypy -p midtier

$(BENCH_VENV)/bin/litellm:
	@test -x $(BENCH_VENV)/bin/python || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --disable-pip-version-check --quiet '$(LITELLM)'

# midtier's added latency in front of an upstream, side by side with LiteLLM's proxy
bench-gateway: setup $(BENCH_VENV)/bin/litellm
	$(PY) bench/gateway.py --litellm $(BENCH_VENV)/bin/litellm
