# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up by them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: install run test test-fast lint format bench clean-data

$(STAMP): requirements.txt
	@test -n "$(PYTHON)" || { echo "Python 3.11 is needed (python3.11 or python3 on PATH)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

## Set up (venv, database, demo data, initial model), start CDN + ML server + app; Ctrl-C stops.
run: install
	$(PY) -m tagging up

## Lint, format check, and the whole test suite (PostgreSQL too when TAGGING_TEST_POSTGRES_URL is set);
## the 30 slowest tests are listed at the end, to keep the suite well under 15 minutes.
test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest --durations=30 $(PYTEST_ARGS)

## The fast suite while developing (under two minutes): no model training, whole-demo runs or browser.
test-fast: install
	$(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: install
	$(PY) bench/scrape_bench.py
	$(PY) bench/decode_bench.py
	$(PY) bench/inference_bench.py
	$(PY) bench/review_bench.py
	$(PY) bench/review_browser_bench.py
	$(PY) bench/replicas_bench.py
	$(PY) bench/cluster_bench.py
	$(PY) bench/killed_worker_bench.py
	$(PY) bench/memory_bench.py
	$(PY) bench/charts_bench.py
	$(PY) bench/dataset_bench.py

clean-data:
	rm -rf data/*.sqlite* data/demo data/models data/ml_token
