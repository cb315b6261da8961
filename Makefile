# Two entry points, each builds its own environment: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[nats,test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m piko_trio_events demo $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check piko_trio_events tests
	$(VENV)/bin/ruff format --check piko_trio_events tests
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest $(ARGS)

bench: $(VENV)/.installed
	$(PY) -m piko_trio_events.bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache .hypothesis
