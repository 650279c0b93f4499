# Two commands on a fresh machine:
#   make demo   set up .venv (pinned), build, run the main job (examples/demo.py)
#   make test   same set-up, then lint and the test suite
# On a machine whose Python already has torch and cannot download (the lent GPU machines):
#   make test PYTHON=python3      (no venv: builds and tests against that Python's torch)

VENV          := .venv
PYTHON        ?=
ifeq ($(strip $(PYTHON)),)
PY            := $(VENV)/bin/python
SETUP_DEPS    := $(VENV)/.deps-installed
else
PY            := $(PYTHON)
SETUP_DEPS    :=
endif
CUDA_HOME     ?= $(shell [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda)
TORCH_CUDA_ARCH_LIST ?= 8.0;8.6;9.0+PTX
MAX_JOBS      ?= $(shell nproc 2>/dev/null || echo 2)
export CUDA_HOME TORCH_CUDA_ARCH_LIST MAX_JOBS

.PHONY: demo test build lint format bench cmake clean

demo: build
	$(PY) examples/demo.py

test: build lint
	bash scripts/run_tests.sh $(PY)

$(VENV)/.deps-installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements-dev.txt
	touch $@

build: $(SETUP_DEPS)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	$(PY) -c "import simplicial_attn as sa; print('simplicial_attn build:', sa.build_info())"

lint: $(SETUP_DEPS)
	bash scripts/lint.sh $(PY)

format: $(SETUP_DEPS)
	$(PY) -m ruff format .
	bash scripts/clang_format.sh --fix $(PY)

bench: build
	$(PY) bench/run.py --quick

cmake: $(SETUP_DEPS)
	$(PY) scripts/build_cmake.py build-cmake

clean:
	rm -rf build build-cmake python/simplicial_attn/_C*.so python/*.egg-info
