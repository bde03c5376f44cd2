# Two commands for learners: `make lab` and `make test`. Both set up .venv first if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: setup lab test lint unit notebooks weights bench strip clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[test]"
	$(BIN)/python -m ipykernel install --user --name vislib --display-name "Python (vislib)"
	touch $(STAMP)

lab: setup  ## start JupyterLab on the course notebooks
	$(BIN)/jupyter lab notebooks/

test: lint unit notebooks  ## ruff, the unit tests, then every notebook top to bottom

lint: setup
	$(BIN)/ruff check vislib tests notebooks benchmarks

unit: setup
	$(BIN)/pytest tests

notebooks: setup  ## nbval: every cell runs without error; each notebook must finish in 60 s
	$(BIN)/pytest --nbval-lax notebooks

weights: setup  ## retrain ShapesNet (seeded, about 10 minutes on a 2-core CPU)
	$(BIN)/python -m vislib.train

bench: setup  ## vislib side by side with Captum, pytorch-grad-cam and torchcam -> benchmarks/RESULTS.md
	$(PIP) -e ".[test,bench]"
	$(BIN)/python benchmarks/run.py

strip:  ## remove outputs and execution counts from the notebooks before committing
	$(BIN)/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
