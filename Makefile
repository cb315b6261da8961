# Two entry points, each builds its own environment: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: demo test lint bench docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[nats,test,docs]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m piko_trio_events demo $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check piko_trio_events tests docs
	$(VENV)/bin/ruff format --check piko_trio_events tests docs
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest $(ARGS)

# The benchmark's optional contenders (FastStream) and plot (matplotlib).
$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[nats,test,docs,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(PY) -m piko_trio_events.bench $(ARGS)

docs: $(VENV)/.installed
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) docs/_build build *.egg-info .mypy_cache .pytest_cache .ruff_cache .hypothesis
