# Two commands after cloning: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean gpu-check

install: $(STAMP)

$(STAMP): requirements/cpu.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/cpu.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	PYTHON=$(abspath $(PY)) bash examples/pretrain_pose.sh --resume

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# One intra-op thread per test process: two processes on two cores, no OpenMP threads spinning against
# each other (tests that compare thread counts set theirs); the longest test files first (tests/conftest.py).
test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

# On a machine with a GPU and an installed CUDA torch (the Docker image, or any environment with
# pose_mcore installed): creates no venv, downloads nothing. PYTHON picks the interpreter.
gpu-check:
	PYTHON=$${GPU_PYTHON:-python3} bash tools/gpu_check.sh

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache *.egg-info
