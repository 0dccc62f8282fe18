# The two commands a fresh clone needs: `make demo` starts the demo, `make test` runs the tests.
# Both build .venv from the pinned requirements the first time (and again when they change).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test dashboard seed bench

demo: $(VENV)/.runtime
	$(BIN)/python -m demo $(ARGS)

test: $(VENV)/.dev
	$(BIN)/python -m pytest $(ARGS)

bench: $(VENV)/.bench
	$(BIN)/python -m bench $(ARGS)

dashboard: $(VENV)/.runtime
	$(BIN)/streamlit run dashboard/app.py $(ARGS)

$(VENV)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.bench: $(VENV)/.runtime requirements-bench.txt
	$(BIN)/python -m pip install -q -r requirements-bench.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@
