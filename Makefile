# The course's public interface. Every target creates .venv from the pins if needed.
# Quickstart:  make lab   (open the course)   |   make test   (run every check)
# Learners get requirements.txt only; make test/check/lint/run/bench add requirements-dev.txt.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev
NB     ?= notebooks/00_welcome.ipynb
# Tests and notebooks run side by side; a notebook's cells stay together on one worker (one kernel).
JOBS   ?= 4
PYTEST := $(BIN)/python -m pytest -n $(JOBS)

.PHONY: lab test check test-busy lint run bench labs grade doctor wheels clean help

help:
	@echo "make lab    - set up .venv and open JupyterLab on $(NB)"
	@echo "make test   - set up .venv and run the whole test suite (helpers, brokers, notebooks, grader)"
	@echo "make check  - the quick tier: lint + every test that needs no broker, no kernel, no browser"
	@echo "make test-busy - make test with two CPU-bound loops beside it (a busy 2-core laptop)"
	@echo "make lint   - ruff (lint + format check) and mypy; part of make test"
	@echo "make run    - execute every notebook headless into build/: ipynb, offline html, report.html (do the claims hold here?)"
	@echo "make bench  - measure HTTP, MQTT and load-generator performance; print a table"
	@echo "make labs   - regenerate labs/ from solutions/"
	@echo "make grade DIR=submissions/  - grade every notebook in DIR (writes grades.csv)"
	@echo "make doctor - check this machine can run the course"
	@echo "make wheels - ask the package index: do the learner pins install from wheels on every platform?"

# Re-created only when the pins change: re-running any target is fast.
$(STAMP): requirements.txt pyproject.toml jupyter/overrides.json
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@# The course's JupyterLab defaults (no news popup, no update checks: nothing leaves the machine),
	@# in this virtualenv's settings folder: the learner's own JupyterLab settings stay untouched.
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp jupyter/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $(STAMP)

# The contributors' tools (tests, lint, browser test, offline HTML) on top of the learner's set.
$(DEV): $(STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $(DEV)

lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir="$(CURDIR)" \
	  --LabApp.default_url=/lab/tree/$(NB) $(if $(filter 0,$(shell id -u)),--allow-root)

test: lint
	$(PYTEST) tests $(wildcard notebooks solutions) --nbval-lax --durations=20

check: lint
	$(PYTEST) -m "not broker and not kernel and not browser" tests

# Two bounded busy loops (an hour at most) beside make test, stopped when it ends.
BUSY_LOOP := import time; end = time.monotonic() + 3600; exec('while time.monotonic() < end: pass')
test-busy: $(DEV)
	@pids=""; for i in 1 2; do $(BIN)/python -c "$(BUSY_LOOP)" & pids="$$pids $$!"; done; \
	  echo "busy loops:$$pids"; status=0; $(MAKE) test || status=$$?; kill $$pids 2>/dev/null; exit $$status

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

run: $(DEV)
	$(BIN)/python -m helpers run --out build

bench: $(DEV)
	$(BIN)/python -m helpers bench --out build/bench.md --readme README.md

labs: $(STAMP)
	$(BIN)/python -m helpers labs

grade: $(STAMP)
	@test -n "$(DIR)" || (echo "usage: make grade DIR=folder-of-submissions" && exit 2)
	$(BIN)/python -m helpers grade $(DIR) --csv grades.csv --json grades.json

doctor: $(STAMP)
	$(BIN)/python -m helpers doctor

wheels: $(DEV)
	$(BIN)/python -m helpers wheels

clean:
	rm -rf build .pytest_cache
