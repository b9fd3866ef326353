# Set-up and checks. `make test` alone works on a fresh machine: it installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-output

.PHONY: install test lint docs bench demo clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,lint,docs]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check kempnerforge tests bench examples
	$(VENV)/bin/ruff format --check kempnerforge tests bench examples
	$(VENV)/bin/mypy

docs: install
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

bench: install
	$(PY) -m bench $(BENCH)

demo: install
	$(PY) examples/demo.py --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) docs/_build $(DEMO_DIR) .pytest_cache
