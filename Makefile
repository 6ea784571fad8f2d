# Task runner. `make demo` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= cpu,export,dev

.PHONY: install demo test acceptance test-fast lint bench device-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

# The main job: export (fp32 + INT8), pg-run on a clip, pg-certify, on the bundled default model.
demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

# The whole test suite (what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

# The hour-scale acceptance runs (300 certified images per view defense attacked at every position).
acceptance: $(STAMP)
	PATCHGUARD_ACCEPTANCE=1 $(BIN)/python -m pytest -q -ra -s -m acceptance

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

# ruff on the whole tree, mypy on the library. The library's folders install as
# patchguard.<stage> (pyproject's package-dir), so mypy reads them through a
# folder of links named the way they import.
TYPECHECK := build/typecheck
lint: $(STAMP)
	$(BIN)/python -m ruff check .
	mkdir -p $(TYPECHECK)/patchguard
	for stage in models export calibration runtime; do ln -sfn ../../../$$stage $(TYPECHECK)/patchguard/$$stage; done
	ln -sfn ../../../patchguard/__init__.py $(TYPECHECK)/patchguard/__init__.py
	MYPYPATH=$(TYPECHECK) $(BIN)/python -m mypy

# Speed figures, printed (CI runs them with --short).
# Every script in benchmarks/, in full (SHORT=--short for the quick CI form where a script has one).
bench: $(STAMP)
	for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script $(SHORT) || exit 1; done

# On a GPU machine with TensorRT (a Jetson: see README, Jetson): engines, GPU providers, GPU tests.
# Where TensorRT or a GPU is missing those steps print SKIP and the check still exits 0.
device-check: $(STAMP)
	PYTHON=$(BIN)/python bash tools/device_smoke.sh

clean:
	rm -rf out build *.egg-info .pytest_cache .hypothesis
