# The course's public interface. Every target creates .venv from the pins if needed.
# Quickstart:  make lab   (open the course)   |   make test   (run every check)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NB     ?= notebooks/00_welcome.ipynb

.PHONY: lab test lint run bench labs grade doctor clean help

help:
	@echo "make lab    - set up .venv and open JupyterLab on $(NB)"
	@echo "make test   - set up .venv and run the whole test suite (helpers, brokers, notebooks, grader)"
	@echo "make lint   - ruff (lint + format check) and mypy; part of make test"
	@echo "make run    - execute every notebook headless into build/: ipynb, offline html, report.html (do the claims hold here?)"
	@echo "make bench  - measure HTTP, MQTT and load-generator performance; print a table"
	@echo "make labs   - regenerate labs/ from solutions/"
	@echo "make grade DIR=submissions/  - grade every notebook in DIR (writes grades.csv)"
	@echo "make doctor - check this machine can run the course"

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

lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir="$(CURDIR)" \
	  --LabApp.default_url=/lab/tree/$(NB) $(if $(filter 0,$(shell id -u)),--allow-root)

test: lint
	$(BIN)/python -m pytest tests $(wildcard notebooks solutions) --nbval-lax

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

run: $(STAMP)
	$(BIN)/python -m helpers run --out build

bench: $(STAMP)
	$(BIN)/python -m helpers bench --out build/bench.md --readme README.md

labs: $(STAMP)
	$(BIN)/python -m helpers labs

grade: $(STAMP)
	@test -n "$(DIR)" || (echo "usage: make grade DIR=folder-of-submissions" && exit 2)
	$(BIN)/python -m helpers grade $(DIR) --csv grades.csv --json grades.json

doctor: $(STAMP)
	$(BIN)/python -m helpers doctor

clean:
	rm -rf build .pytest_cache
