# Two commands do all the set-up: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
# The torch spec is installed first, so that the project's `torch>=` range installs nothing more.
# 2.13.0 is the CPU wheel available offline here; GPU users: TORCH_SPEC="torch --index-url ..." or a CUDA pin.
TORCH_SPEC ?= torch==2.13.0
# cpu -> faiss-cpu, gpu -> faiss-gpu (never both: they ship the same module)
FAISS_EXTRA ?= cpu
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(FAISS_EXTRA)
PYTEST_ARGS ?=

AUTOFAISS_VENV ?= .venv-autofaiss

.PHONY: venv demo test experiment bench bench-index clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e ".[$(FAISS_EXTRA),test,cluster]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/latentsweep demo

experiment: venv
	$(VENV)/bin/latentsweep experiment --out experiment --docs docs/results.md

test: venv
	RAY_AUTH_MODE=disabled $(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	RAY_AUTH_MODE=disabled $(PY) benchmarks/run_all.py

# autofaiss pins numpy<2: it gets its own environment, and the benchmark runs both sides in one run.
$(AUTOFAISS_VENV)/bin/python:
	$(PYTHON) -m venv $(AUTOFAISS_VENV)
	$(AUTOFAISS_VENV)/bin/python -m pip install -q "autofaiss==2.18.0" "pyarrow<19"  # pyarrow 19+ needs numpy 2

bench-index: venv $(AUTOFAISS_VENV)/bin/python
	RAY_AUTH_MODE=disabled $(PY) benchmarks/bench_index.py --autofaiss-python $(AUTOFAISS_VENV)/bin/python

clean:
	rm -rf $(VENV) $(AUTOFAISS_VENV) .pytest_cache demo-output experiment
