# Two commands do all the set-up: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
# The torch spec is installed first, so that the project's `torch>=` range installs nothing more.
# 2.13.0 is the CPU wheel available offline here. Both apply when $(VENV) is created (`make clean` first).
TORCH_SPEC ?= torch==2.13.0
# Where torch comes from, passed to pip as `--index-url URL` when set; empty: PyPI. A CUDA build for GPU
# machines: TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (torch 2.13's CUDA 12 build, the one
# whose CUDA 12.6 libraries faiss-gpu 1.15.1 uses, see cluster.yaml). --index-url, not --extra-index-url:
# with PyPI also searched, pip may take PyPI's torch of the same version (a CUDA 13 build on Linux).
TORCH_INDEX_URL ?=
# cpu -> faiss-cpu, gpu -> faiss-gpu (never both: they ship the same module `faiss`; switching
# FAISS_EXTRA on an existing $(VENV) uninstalls the other build first)
FAISS_EXTRA ?= cpu
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(FAISS_EXTRA)
OTHER_FAISS := $(if $(filter gpu,$(FAISS_EXTRA)),cpu,gpu)
PYTEST_ARGS ?=

AUTOFAISS_VENV ?= .venv-autofaiss

.PHONY: venv demo test experiment bench bench-index docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"$(if $(TORCH_INDEX_URL), --index-url "$(TORCH_INDEX_URL)")

# Both FAISS builds write the same files: uninstalling one after the other was installed over it would
# leave a broken `faiss`, so when the other build is present both go and the wanted one is reinstalled.
$(STAMP): pyproject.toml lab/pyproject.toml | $(PY)
	if $(PIP) show -q faiss-$(OTHER_FAISS) >/dev/null 2>&1; then \
	  $(PIP) uninstall -q -y faiss-$(OTHER_FAISS) faiss-$(FAISS_EXTRA); rm -f $(VENV)/.installed-$(OTHER_FAISS); fi
	$(PIP) install -q -e ".[$(FAISS_EXTRA),test,cluster]" -e ./lab
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/latentsweep demo

# The experiment's own end-to-end test first (small sizes, minutes; `make test` leaves it out), then the run.
experiment: venv
	RAY_AUTH_MODE=disabled $(PY) -m pytest -m experiment -q
	$(VENV)/bin/latentsweep experiment --out experiment --docs docs/results.md

test: venv
	RAY_AUTH_MODE=disabled $(PY) -m pytest $(PYTEST_ARGS)

# The documentation site (mkdocs.yml, pages in docs/) into site/; --strict: a broken link fails.
docs: venv
	$(VENV)/bin/mkdocs build --strict

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

# Every GPU path installed against the CPU, one table (benchmarks/gpu_check.py, under 8 minutes; the CPU
# half where there is no CUDA device). Uses the existing $(VENV) as it is: no `venv` prerequisite, which
# would reinstall FAISS when FAISS_EXTRA differs from the node's. GPU_CHECK_ARGS: e.g. --quick, --cpu.
.PHONY: gpu-check
gpu-check:
	@test -x $(PY) || { echo "error: no $(PY): run make venv first (FAISS_EXTRA=gpu on GPU nodes)" >&2; exit 2; }
	RAY_AUTH_MODE=disabled PYTHONPATH=. $(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)
