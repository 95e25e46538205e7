# The two commands of the README. Both create .venv with pip if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYNTH := data/synth

.PHONY: demo test lint venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(SYNTH)/train-0000.tar: | $(STAMP)
	$(BIN)/smotune data synth --out $(SYNTH)

# The demo starts over each time: Tune's state of an earlier demo goes, its MLflow runs stay.
demo: $(STAMP) $(SYNTH)/train-0000.tar
	rm -rf runs/demo
	$(BIN)/smotune sweep search_spaces/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25 tests

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
