# tongban: `make demo` runs the case loop end to end; `make test` passes every test.
# Everything a fresh machine needs (venv, Python packages, Kafka jars, broker, PostgreSQL)
# is installed and started from here; only JDK 17, Maven and Python 3.11 are prerequisites.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
KAFKA_BROKERS ?= 1
export KAFKA_BROKERS
# The run folder of deploy/local/*.sh (TONGBAN_RUN_DIR moves a whole second stack elsewhere).
RUN_DIR := $(or $(TONGBAN_RUN_DIR),.run)

.PHONY: help install up down status lint test test-unit test-integration test-cluster faults demo federation console bench bench-soak bench-xregion clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# tests/unit/test_openapi.py's client generator, in a venv of its own: its pins (httpx < 0.29,
# typer < 0.28) would otherwise hold tongban's own packages back.
CODEGEN := $(VENV)/codegen
$(CODEGEN)/bin/openapi-python-client: | $(BIN)/python
	$(PYTHON) -m venv $(CODEGEN)
	$(CODEGEN)/bin/pip install --quiet 'openapi-python-client==0.29.*'

install: $(VENV)/.installed $(CODEGEN)/bin/openapi-python-client ## create .venv with the tongban command and fetch the Kafka jars
	@bash deploy/local/fetch-kafka.sh
	@bash deploy/local/browser.sh

up: install ## start Kafka (KAFKA_BROKERS=1|3) and PostgreSQL, migrate, create topics
	@bash deploy/local/stack.sh up
	@source $(RUN_DIR)/env && $(BIN)/tongban migrate && $(BIN)/tongban topics

down: ## stop everything `make up` (or `make demo`, `make federation`: both regions and MirrorMaker) started
	@bash deploy/local/federation.sh down

status: ## show what is running
	@bash deploy/local/stack.sh status

lint: install ## ruff, mypy and the import contracts (lint-imports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services contracts tests
	$(BIN)/lint-imports --no-logo

test: install lint ## lint, start the stack, run every test (one and three brokers), stop
	@bash deploy/local/run-tests.sh

test-unit: install ## pure-logic tests only (no stack)
	$(BIN)/pytest -m unit -q

faults: install ## the fault suite, full size: 3 brokers, 2 processes per service, thousands of cases per scenario
	@bash deploy/local/run-faults.sh

demo: up ## run the case loop end to end on local defaults (leaves it running: make down)
	@bash deploy/local/services.sh up
	@source $(RUN_DIR)/env && $(BIN)/tongban demo --lapse-file $(RUN_DIR)/demo/outstanding-deferral
	@echo "Restarting the services with their clock 30 days ahead, so the outstanding deferral lapses:"
	@bash deploy/local/services.sh down >/dev/null && TONGBAN_CLOCK_OFFSET_S=2592000 bash deploy/local/services.sh up >/dev/null
	@source $(RUN_DIR)/env && $(BIN)/tongban demo-lapse "$$(cat $(RUN_DIR)/demo/outstanding-deferral)"; \
	  rc=$$?; echo "Restarting the services on the wall clock again."; \
	  bash deploy/local/services.sh down >/dev/null && bash deploy/local/services.sh up >/dev/null; exit $$rc
	@echo "The stack and the four services keep running (logs in .run/logs); make down stops them."

federation: install ## two regions (云州市 here, 澜州市 on Kafka 19092, PostgreSQL 15432, services +10000) linked by MirrorMaker 2 (leaves them running: make down)
	@bash deploy/local/federation.sh up

console: install ## the operator console on http://127.0.0.1:8000 (needs the stack; make demo starts services)
	@source $(RUN_DIR)/env && $(BIN)/tongban console

bench: $(VENV)/.installed ## throughput/latency bench: raw pipeline vs tongban at REPLICAS=1 and 2 (4-6 min; report in .run/bench/; needs Go for its load generator)
	@bash deploy/local/fetch-kafka.sh
	@bash deploy/local/bench.sh

bench-soak: $(VENV)/.installed ## sustained load: 50 cases/s for 10 min on one region, RSS per process over time against 150 MB (about 12 min; .run/bench/soak.json, soak.png; BENCH_SOAK_ARGS)
	@bash deploy/local/fetch-kafka.sh
	@bash deploy/local/bench-soak.sh

bench-xregion: $(VENV)/.installed ## cost of a case across regions against a single case, on two linked regions (started and stopped if not up; about 4 min; .run/bench/xregion.json)
	@bash deploy/local/fetch-kafka.sh
	@bash deploy/local/bench-xregion.sh

clean: down ## remove the run folder (keeps the venv and the Kafka jar cache)
	@bash deploy/local/federation.sh clean
	@bash deploy/local/postgres.sh clean
	rm -rf $(RUN_DIR)
