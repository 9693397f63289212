# The README's two commands call these targets; .ci/run calls `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint bench

$(PY):
	./scripts/setup.sh

setup:
	./scripts/setup.sh

demo: setup
	$(VENV)/bin/autotune search studies/digits/model.py --name digits-demo --trials 30

test: setup
	$(PY) -m pytest -q

test-fast: $(PY)
	$(PY) -m pytest -q -m "not integration"

lint: $(PY)
	$(VENV)/bin/ruff check autotune tests scripts

bench: setup
	./scripts/bench_all.sh
