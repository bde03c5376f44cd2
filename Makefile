# Two commands for learners: `make lab` and `make test`. Both set up .venv first if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: setup lab test lint unit notebooks weights bench strip clean assignments autograde

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[test]"
	$(BIN)/python -m ipykernel install --user --name vislib --display-name "Python (vislib)"
	touch $(STAMP)

lab: setup  ## start JupyterLab on the course: notebooks/ and the assignments in assignments/release/
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root)  # root: e.g. in a container

test: lint unit notebooks  ## ruff, the unit tests, then every notebook top to bottom

lint: setup
	$(BIN)/ruff check vislib tests notebooks benchmarks book assignments/source

# Tests run two at a time, one thread each: two processes of two threads on two cores wait for each other.
PARALLEL := OMP_NUM_THREADS=1

unit: setup  ## the unit tests on both cores (a file's tests stay together: its fixtures are made once)
	$(PARALLEL) $(BIN)/pytest -n 2 --dist loadfile tests

# The models of the notebooks' ImageNet sections (`pretrained_available("...")`; a unit test keeps the list whole).
IMAGENET_MODELS   := resnet18 vgg16 resnet50 vgg19
IMAGENET_NOTEBOOKS = $(shell grep -l pretrained_available notebooks/*.ipynb)

# Two passes, each on both cores. First every notebook as a learner without ImageNet weights runs it
# (an empty torch cache; the assignments' solutions run top to bottom in tests/test_assignments.py, which
# grades them). Then the notebooks with an ImageNet section, in a temporary torch cache (about 1.3 GB,
# removed afterwards) holding your cached ImageNet weights where you have them, else seeded random
# stand-ins that the loader accepts only because VISLIB_STAND_IN_WEIGHTS lists their full sha256.
notebooks: setup  ## nbval: every cell runs without error, ImageNet sections too; run times reported
	home=$$(mktemp -d) && trap 'rm -rf "$$home"' EXIT && \
	TORCH_HOME="$$home/empty" $(PARALLEL) $(BIN)/pytest -n 2 --dist loadfile --nbval-lax notebooks && \
	stand_ins=$$($(BIN)/python -m vislib.models test-cache "$$home/imagenet" $(IMAGENET_MODELS)) && \
	TORCH_HOME="$$home/imagenet" VISLIB_STAND_IN_WEIGHTS="$$stand_ins" $(PARALLEL) $(BIN)/pytest -n 2 --dist loadfile --nbval-lax \
		$(IMAGENET_NOTEBOOKS)

# --- assignments: nbgrader, offline, with a local sqlite gradebook ----------------------------------
# nbgrader calls `alembic` by name, so the venv's bin/ goes first on PATH. COURSE is the course folder;
# "*" is every assignment in it.
COURSE  ?= assignments
NBGRADER = cd $(COURSE) && PATH="$(CURDIR)/$(BIN):$$PATH" "$(CURDIR)/$(BIN)/nbgrader"

assignments: setup  ## the learners' versions: $(COURSE)/release/ from $(COURSE)/source/, solutions and hidden tests removed
	$(NBGRADER) generate_assignment "*" --force --log-level=ERROR

autograde: setup  ## grade $(COURSE)/submitted/<student>/<assignment>/: grades.csv, feedback/ HTML, integrity.csv
	@test -n "$$(ls -d $(COURSE)/submitted/*/*/ 2>/dev/null)" || \
		{ echo "no submissions: put them in $(COURSE)/submitted/<student>/<assignment>/"; exit 1; }
	rm -f $(COURSE)/integrity.csv
	$(NBGRADER) generate_assignment "*" --force --log-level=ERROR  # the gradebook learns each assignment's cells
	$(NBGRADER) autograde "*" --create --force --log-level=ERROR || \
		echo "nbgrader autograde reported errors; the other submissions are graded (see below)"
	$(NBGRADER) generate_feedback "*" --force --log-level=ERROR
	$(NBGRADER) export --log-level=ERROR
	$(BIN)/python -m vislib.grading report $(COURSE)
	@echo "grades: $(COURSE)/grades.csv; feedback: $(COURSE)/feedback/<student>/<assignment>/; report: $(COURSE)/integrity.csv"

weights: setup  ## retrain ShapesNet and the robust ShapesNet (seeded, about 10 + 14 minutes on a 2-core CPU)
	$(BIN)/python -m vislib.train
	$(BIN)/python -m vislib.train --robust

bench: setup  ## vislib side by side with Captum, pytorch-grad-cam and torchcam -> benchmarks/RESULTS.md
	$(PIP) -e ".[test,bench]"
	$(BIN)/python benchmarks/run.py

strip:  ## remove outputs and execution counts from the notebooks before committing
	$(BIN)/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache

# --- the course site and the browser checks ----------------------------------------------------
.PHONY: browser-deps test-browser book check-book check-feedback
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

check-book: browser-deps  ## open build/site in headless Chromium, network off: every page shows its figures and typesets its formulas
	$(BIN)/pytest -p no:cacheprovider -s tests/browser/check_site.py

check-feedback: browser-deps  ## grade one submission, open its feedback page in headless Chromium, network off: formulas drawn
	$(BIN)/pytest -p no:cacheprovider -s tests/browser/check_feedback.py

# --- a class on JupyterHub (as root) -------------------------------------------------------------------
# hub/hubctl.py (Debian's python3) installs /opt/vislib-hub once (JupyterHub from hub/requirements.txt, the proxy
# from hub/package-lock.json, the servers' environment linked from $(VENV)), creates the roster's accounts and
# runs JupyterHub in the foreground on http://127.0.0.1:$(HUB_PORT). See README, "Run a class on JupyterHub".
.PHONY: hub hub-stop test-hub hub-root
HUB_PREFIX     ?= /opt/vislib-hub
HUB_ROOT       ?= /srv/vislib
ROSTER         ?= hub/roster.csv
HUB_GROUP      ?= vislib-instructors
HUB_PORT       ?= 8000
HUB_API_PORT   ?= 8081
PROXY_API_PORT ?= 8001
HUB_LIMIT_S    ?= 1500
HUBCTL          = /usr/bin/python3 hub/hubctl.py --prefix $(HUB_PREFIX) --root $(HUB_ROOT)
NEED_ROOT       = @test "$$(id -u)" = 0 || { echo "make $(or $(MAKECMDGOALS),hub) needs root: the hub \
creates one Unix account per person on the roster and starts each person's server as that person. Nothing was done."; \
exit 1; }

hub-root:
	$(NEED_ROOT)

hub: hub-root setup  ## (root) JupyterHub for $(ROSTER): one account each, nbgrader's exchange, formgrader; Ctrl-C stops it
	$(HUBCTL) install --venv $(VENV)
	$(HUBCTL) start --roster $(ROSTER) --group $(HUB_GROUP) --port $(HUB_PORT) --hub-api-port $(HUB_API_PORT) \
		--proxy-api-port $(PROXY_API_PORT)

hub-stop: hub-root  ## (root) stop the hub of $(HUB_ROOT): the hub, the proxy, every server, what its accounts left running
	$(HUBCTL) stop

test-hub: hub-root browser-deps  ## (root) make hub with tests/hub/roster.csv, a class in Chromium; all removed after
	VISLIB_HUB_LIMIT_S=$(HUB_LIMIT_S) timeout -k 30 $$(($(HUB_LIMIT_S) + 120)) \
		$(BIN)/pytest -p no:cacheprovider -v tests/hub/check_hub.py; status=$$?; \
		/usr/bin/python3 hub/hubctl.py --root /srv/vislib-hubtest remove >/dev/null; exit $$status
