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
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)  # root: e.g. in a container

test: lint unit notebooks  ## ruff, the unit tests, then every notebook top to bottom

lint: setup
	$(BIN)/ruff check vislib tests notebooks benchmarks book

unit: setup
	$(BIN)/pytest tests

# The models of the notebooks' ImageNet sections (`pretrained_available("...")`; a unit test keeps the list whole).
IMAGENET_MODELS   := resnet18 vgg16 resnet50 vgg19
IMAGENET_NOTEBOOKS = $(shell grep -l pretrained_available notebooks/*.ipynb)

# Two passes. First every notebook as a learner without ImageNet weights runs it (an empty torch
# cache). Then the notebooks with an ImageNet section, in a temporary torch cache (about 1.3 GB,
# removed afterwards) holding your cached ImageNet weights where you have them, else seeded random
# stand-ins that the loader accepts only because VISLIB_STAND_IN_WEIGHTS lists their full sha256.
notebooks: setup  ## nbval: every cell runs without error, ImageNet sections too; each notebook in 60 s
	home=$$(mktemp -d) && trap 'rm -rf "$$home"' EXIT && \
	TORCH_HOME="$$home/empty" $(BIN)/pytest --nbval-lax notebooks && \
	stand_ins=$$($(BIN)/python -m vislib.models test-cache "$$home/imagenet" $(IMAGENET_MODELS)) && \
	TORCH_HOME="$$home/imagenet" VISLIB_STAND_IN_WEIGHTS="$$stand_ins" $(BIN)/pytest --nbval-lax $(IMAGENET_NOTEBOOKS)

weights: setup  ## retrain ShapesNet (seeded, about 10 minutes on a 2-core CPU)
	$(BIN)/python -m vislib.train

bench: setup  ## vislib side by side with Captum, pytorch-grad-cam and torchcam -> benchmarks/RESULTS.md
	$(PIP) -e ".[test,bench]"
	$(BIN)/python benchmarks/run.py

strip:  ## remove outputs and execution counts from the notebooks before committing
	$(BIN)/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache

# --- the course site and the browser checks ----------------------------------------------------
.PHONY: browser-deps test-browser book check-book
CHROMIUM        ?= /usr/bin/chromium
BROWSER_LIMIT_S ?= 420

browser-deps: setup  ## Debian's Chromium (apt-get, as root) and Playwright for Python; no browser download
	test -x $(CHROMIUM) || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	$(PIP) -e ".[test,browser]"

test-browser: browser-deps  ## JupyterLab + headless Chromium: run a notebook, change an explorer, its figure changes
	VISLIB_BROWSER_LIMIT_S=$(BROWSER_LIMIT_S) timeout -k 10 $$(($(BROWSER_LIMIT_S) + 60)) \
		$(BIN)/pytest -p no:cacheprovider -s tests/browser/check_jupyterlab.py

book: setup  ## run every notebook and render the course site in build/site/ (nbconvert)
	$(BIN)/python book/build.py --out build/site

check-book: browser-deps  ## open build/site in headless Chromium: every notebook page shows its figures
	$(BIN)/pytest -p no:cacheprovider -s tests/browser/check_site.py
