# Everything a fresh machine needs: `make run` (the main job) and `make test` (the tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov pins dependencies (boto3, networkx, pydantic...) that clash with the project's: it
# gets a virtualenv of its own, used only by the tests that scan terraform/ and manifests/.
TOOLS_VENV ?= .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed

.PHONY: install tools run test bench bench-sweep simulate screenshots monitor-demo fuzz readme-example compile lock clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock tools/requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install -q --compile-bytecode -r requirements.lock
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install -q --compile-bytecode --no-deps -r tools/requirements-nodeps.txt
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install -q --no-deps -e .
	touch $(STAMP)

tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): tools/requirements-scan.lock | $(STAMP)
	$(PYTHON) -m venv $(TOOLS_VENV)
	VIRTUAL_ENV=$(TOOLS_VENV) $(BIN)/uv pip install -q --compile-bytecode -r tools/requirements-scan.lock
	touch $(TOOLS_STAMP)

## The main job: the KFP pipeline run locally on the built-in default data.
run: install
	$(BIN)/recsys run

## The test suite (what CI runs).
test: install tools
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m "not bench and not fuzz" --durations=15 tests

## Speed, memory and quality targets (not part of `make test`). The HTTP figures need `wrk`
## (apt-get install wrk): without it a Python load generator is the bottleneck, and says so.
bench: install
	@command -v wrk >/dev/null || echo "make bench: wrk is not installed; HTTP throughput figures will measure the Python load generator (apt-get install wrk)" >&2
	$(BIN)/python -m pytest -m bench -s --timeout=10800 tests/benchmarks

## Variants of the stratified config over the five MovieLens 100K split seeds (about 100 s each).
RECSYS_SWEEP ?= tests/benchmarks/ml100k_sweep.yaml
bench-sweep: install
	RECSYS_SWEEP=$(RECSYS_SWEEP) $(BIN)/python -m pytest -m bench -s --timeout=10800 \
		tests/benchmarks/bench_training.py -k config_sweep

## The closed loop locally: simulated users, the events service and the model server, decisions.
simulate: install
	$(BIN)/recsys simulate

## Retake the console's screenshots (docs/console/) on a demo home built from the default data;
## also prints each page's load time and download size. Needs chromium (.ci/run installs it).
screenshots: install
	$(BIN)/python tools/console_screenshots.py

## The closed loop on small data, shown: serve, planted shift, `recsys monitor` decides and retrains.
monitor-demo: install
	$(BIN)/python -m pytest -s -q -p no:cacheprovider \
		"tests/integration/test_monitoring.py::test_end_to_end_serve_shift_monitor_retrain"

## Fuzz and load runs against a live predictor (the model `make run` deployed, else a small
## one): schemathesis on /openapi.json, structure-aware v1/v2 fuzzers, load ended by SIGTERM.
## Sizes: FUZZ_EXAMPLES, FUZZ_CASES, LOAD_SECONDS (see tests/fuzz/fuzz_serving.py).
## Also the events service and the console (tests/fuzz/fuzz_events_console.py): hostile bodies,
## headers and raw HTTP, form posts against the console's checks, load ended by SIGTERM.
fuzz: install
	$(BIN)/python -m pytest -m fuzz -s -p no:cacheprovider --timeout=7200 tests/fuzz

## Rewrite the README's serving and real-time history examples from what the model `make run` deployed answers.
readme-example: install
	$(BIN)/python -m serving.example --write README.md

## Rewrite the committed pipeline IR YAML from the code (training and monitoring).
compile: install
	$(BIN)/recsys compile

## Re-resolve the pinned dependency set after changing pyproject.toml.
# requirements.lock: everything (the dev tools and every extra), what `make install` puts in .venv.
# requirements-runtime.lock: the serving image (no alibi-detect, DVC or Dask: about 1 GB less).
# requirements-pipeline.lock: the pipeline image (runtime + the monitoring, sources and
# distributed extras). Both are subsets of requirements.lock, version for version.
EXTRAS := --extra monitoring --extra sources --extra distributed --extra tuning
lock: install
	$(BIN)/uv pip compile pyproject.toml --extra dev $(EXTRAS) --python-version 3.11 -q -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml -c requirements.lock --python-version 3.11 -q -o requirements-runtime.lock
	$(BIN)/uv pip compile pyproject.toml $(EXTRAS) -c requirements.lock --python-version 3.11 -q -o requirements-pipeline.lock
	$(BIN)/uv pip compile tools/requirements-scan.txt --python-version 3.11 -q -o tools/requirements-scan.lock

clean:
	rm -rf $(VENV) $(TOOLS_VENV) runs build *.egg-info
