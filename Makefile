# The two commands a new user runs (see README.md):
#   make demo   - create .venv, install segmix, run the demo
#   make test   - create .venv, install segmix with its test extra, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/segmix demo --overwrite

test: install
	$(BIN)/python -m pytest

benchmark: install
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python benchmarks/shuffle_speed.py

clean:
	rm -rf $(VENV) outputs runs/demo .pytest_cache .hypothesis
