# The two commands of the README: `make quickstart` and `make test`.
# quickstart installs only what the tour needs ('.[cpu]': the library and oneDNN convolutions);
# test adds the test extra (pytest, ruff, TensorFlow for the TFDS tests, ...) to the same venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,cpu]'
	touch $@

.PHONY: install quickstart test lint
install: $(VENV)/.installed-test

quickstart: $(VENV)/.installed
	$(PY) experiments/quickstart.py --workdir=runs/quickstart

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -n 2 --dist loadgroup
