# The two commands of the README: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,cpu]'
	touch $@

.PHONY: install quickstart test lint
install: $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(PY) experiments/quickstart.py --workdir=runs/quickstart

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -n 2 --dist loadgroup
