# mbta_ray: the two commands a newcomer runs are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ROOT ?= artifacts

.PHONY: run test install bench-etl clean

# torch goes in first, pinned: an unpinned torch (or one pulled in by another package) is a
# multi-GB CUDA build. For a CUDA build, install it into .venv before `make install` (README).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## make run: ingest the embedded real MBTA data into a versioned feature dataset and show it.
run: $(STAMP)
	$(BIN)/mbta-ray data ingest --root $(ROOT)
	$(BIN)/mbta-ray data list --root $(ROOT)

## make test: the whole test suite on a real local Ray cluster (tiny data).
test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench-etl: $(STAMP)
	$(BIN)/python bench/etl.py

clean:
	rm -rf $(ROOT) .pytest_cache
