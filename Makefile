# Two commands for learners: `make lab` and `make test`. Both set up .venv first if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: setup lab test lint unit notebooks weights bench strip clean assignments autograde messages

setup: $(STAMP)

# The kernel "Python (vislib)" is registered inside the environment (--sys-prefix:
# .venv/share/jupyter/kernels/vislib), not in the home of whoever ran make (--user, which no other account
# sees). Every account that runs Jupyter from this environment sees it: `make lab`, and the hub's servers,
# which run as each learner's own Unix account from the course's environment. It needs no root (a
# learner's laptop; the system-wide /usr/local/share/jupyter would), and it goes with the environment
# (`make clean`) instead of pointing from a home or /usr/local at a removed .venv. A Jupyter installed
# elsewhere finds it through JUPYTER_PATH=$(CURDIR)/$(VENV)/share/jupyter.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name vislib --display-name "Python (vislib)"
	@echo "compiling umap-learn's numba code once, into its on-disk cache (about 20 s; notebook 01's UMAP then starts in 3 s)"
	$(BIN)/python -c "import torch; from vislib.embedding import project; project(torch.rand(20, 4), 'umap')"
	touch $(STAMP)

lab: setup  ## start JupyterLab on the course: notebooks/ and the assignments in assignments/release/
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root)  # root: e.g. in a container

test: lint  ## ruff, then the unit tests and every notebook top to bottom, in one run on both cores
	$(call in_imagenet_test_cache,$(PYTEST) -n 3 tests notebooks)

lint: setup
	$(BIN)/ruff check vislib tests notebooks benchmarks book assignments/source

# One thread per process: two processes of two threads on two cores wait for each other. A file's tests stay
# together on one worker (its fixtures are made once); the slowest files start first (conftest.py's order:
# --no-loadscope-reorder, else pytest-xdist starts the files with the most tests first). Three
# workers on two cores: while one waits (a grading test's kernel that hangs on purpose, a notebook's kernel
# starting), the other two compute.
PYTEST := OMP_NUM_THREADS=1 $(BIN)/pytest --dist loadfile --no-loadscope-reorder --nbval-lax

unit: setup  ## the unit tests alone
	$(PYTEST) -n 2 tests

notebooks: setup  ## nbval alone: every cell of every notebook runs without error, ImageNet sections too
	$(call in_imagenet_test_cache,$(PYTEST) -n 2 notebooks)

# The models of the notebooks' ImageNet sections (`pretrained_available("...")`; a unit test keeps the list whole).
IMAGENET_MODELS := resnet18 vgg16 resnet50 vgg19

# $(1) in a temporary torch cache (about 1.2 GB, in memory where /dev/shm has room, removed afterwards) holding
# your cached ImageNet weights where you have them, else seeded random stand-ins that the loader accepts only
# because VISLIB_STAND_IN_WEIGHTS lists their full sha256: the notebooks' ImageNet sections run either way. A
# learner's run without ImageNet weights (the sections are skipped) is `make book`'s, in your own cache.
define in_imagenet_test_cache
	set -e; \
	home=$$(mktemp -d -p "$$(test "$$(df --output=avail -BG /dev/shm 2>/dev/null | tail -1 | tr -dc 0-9)" -ge 3 \
		2>/dev/null && echo /dev/shm || echo "$${TMPDIR:-/tmp}")"); \
	trap 'rm -rf "$$home"' EXIT; trap 'exit 130' INT TERM; \
	stand_ins=$$($(BIN)/python -m vislib.models test-cache "$$home" $(IMAGENET_MODELS)); \
	TORCH_HOME="$$home" VISLIB_STAND_IN_WEIGHTS="$$stand_ins" $(1)
endef

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

weights: setup  ## retrain ShapesNet and the robust ShapesNet into vislib/weights/ (package data; seeded, about 10 + 14 minutes on a 2-core CPU)
	$(BIN)/python -m vislib.train
	$(BIN)/python -m vislib.train --robust

bench: setup  ## vislib side by side with Captum, pytorch-grad-cam and torchcam -> benchmarks/RESULTS.md
	$(PIP) -e ".[test,bench]"
	$(BIN)/python benchmarks/run.py

# The checks' messages in Korean: gettext catalogs (domain vislib) managed with Babel. Extract the messages from
# vislib/checks into messages.pot, merge it into the Korean catalog (new and changed messages come out empty or
# fuzzy: translate them), compile the catalog to the .mo the checks read (fuzzy entries are left out).
LOCALES   := vislib/checks/locale
MESSAGES  := $(BIN)/pybabel

messages: setup  ## the checks' messages: extract messages.pot, update and compile the Korean catalog in vislib/checks/locale
	$(MESSAGES) extract -F babel.cfg --add-location=file --project=vislib --version=0.1.0 -o messages.pot .
	$(MESSAGES) update -i messages.pot -d $(LOCALES) -D vislib -l ko --previous --ignore-obsolete
	$(MESSAGES) compile -d $(LOCALES) -D vislib -l ko --statistics

strip:  ## remove outputs and execution counts from the notebooks before committing
	$(BIN)/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache

# --- the course site and the browser checks ----------------------------------------------------
.PHONY: browser-deps test-browser book check-book check-feedback
CHROMIUM        ?= /usr/bin/chromium
BROWSER_LIMIT_S ?= 420

browser-deps: setup  ## Debian's Chromium and a Korean font (apt-get, as root) and Playwright for Python; no browser download
	test -x $(CHROMIUM) || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	command -v fc-list >/dev/null && test -n "$$(fc-list :lang=ko)" || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y fontconfig fonts-noto-cjk)
	$(PIP) -e ".[test,browser]"

test-browser: browser-deps  ## JupyterLab + headless Chromium: run a notebook, change an explorer, its figure changes
	VISLIB_BROWSER_LIMIT_S=$(BROWSER_LIMIT_S) timeout -k 10 $$(($(BROWSER_LIMIT_S) + 60)) \
		$(BIN)/pytest -p no:cacheprovider -s tests/browser/check_jupyterlab.py

book: setup  ## run every notebook and render the course site in build/site/ (nbconvert)
	$(BIN)/python book/build.py --out build/site

check-book: browser-deps  ## open build/site in headless Chromium, network off: every page shows its figures, typesets its formulas, has a glyph for every character
	$(BIN)/pytest -p no:cacheprovider -s tests/browser/check_site.py

check-feedback: browser-deps  ## grade one submission, open its feedback page in headless Chromium, network off: formulas and characters drawn
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
