# mbta_ray: the two commands a newcomer runs are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ROOT ?= artifacts

.PHONY: run serve test test-fast lint format install browser check-manifests image image-gpu bench-etl clean

# torch goes in first, pinned: an unpinned torch (or one pulled in by another package) is a
# multi-GB CUDA build. For a CUDA build, install it into .venv before `make install` (README).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## make run: the main job on the embedded real MBTA data: ingest -> tune -> distill -> evaluate ->
## register -> promote, with a small budget (a few minutes on 2 CPUs), then its summary.
run: $(STAMP)
	$(BIN)/mbta-ray pipeline --root $(ROOT)

## make serve: the production model over HTTP on 127.0.0.1:8000 (serve_config.yaml), on a Ray
## instance that listens on 127.0.0.1 only (as `make run` and the tests start theirs).
serve: $(STAMP)
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(BIN)/serve run serve_config.yaml

## make test: lint, then the whole test suite on a real local Ray cluster (tiny data).
test: lint browser
	$(BIN)/python -m pytest -q tests

## make browser: Debian's chromium and chromedriver for the live page's test (not Selenium's or
## Playwright's own download, which cannot work offline).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

## make test-fast: the tests that need no Ray cluster (under a minute).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not ray" tests

## make lint: ruff's lint rules and format check (pyproject.toml); `make format` fixes what it can.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## make check-manifests: the KubeRay manifest checks alone (they also run inside make test).
check-manifests: $(STAMP)
	$(BIN)/python kuberay/check.py

## make image / image-gpu: the cluster images (needs docker; the tag is the pinned Ray version).
image:
	docker build -f kuberay/Dockerfile -t mbta-ray:2.60.0 .

image-gpu:
	docker build -f kuberay/Dockerfile.gpu -t mbta-ray:2.60.0-gpu .

bench-etl: $(STAMP)
	$(BIN)/python bench/etl.py

clean:
	rm -rf $(ROOT) .pytest_cache
