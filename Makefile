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

.PHONY: venv demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e ".[$(FAISS_EXTRA),test]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/latentsweep demo

test: venv
	RAY_AUTH_MODE=disabled $(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	RAY_AUTH_MODE=disabled $(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache demo-output
