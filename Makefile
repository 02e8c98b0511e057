# ocr-pipeline: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench fake-server clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Digitize samples/ into out/ with the offline default (config/default.yaml: local engine).
run: install
	$(PY) -m pipeline run --config config/default.yaml --input samples --output out

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/run_all.py --short

fake-server: install
	$(PY) -m pipeline fake-server --host 127.0.0.1 --port 8080

clean:
	rm -rf out .pytest_cache .ruff_cache
