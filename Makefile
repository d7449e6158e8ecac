# ACGS-2. `make run` serves decisions; `make test` runs every test tier.
PYTHON ?= python3
PROTO_SRC := $(wildcard protos/acgs/v1/*.proto)
GEN_DIR := service/acgs/v1
GEN_STAMP := $(GEN_DIR)/.stamp

export PYTHONPATH := $(CURDIR)/service:$(CURDIR)/clients/python/src:$(CURDIR)

.PHONY: all proto proto-check proto-baseline run test test-unit lint typecheck policy-test bench stack stack-down clean deps

all: proto

DEPS_STAMP := .acgs/.deps-installed

# Python dependencies, installed once per change of pyproject.toml.
$(DEPS_STAMP): pyproject.toml
	$(PYTHON) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@mkdir -p .acgs && touch $@

# Generated stubs (+ .pyi) live in service/acgs/v1 and are never edited by hand.
$(GEN_STAMP): $(PROTO_SRC) $(DEPS_STAMP)
	@mkdir -p $(GEN_DIR)
	$(PYTHON) -m grpc_tools.protoc -Iprotos --python_out=service --pyi_out=service \
		--grpc_python_out=service $(PROTO_SRC)
	$(PYTHON) clients/python/gen_stubs.py protos
	@touch $(GEN_DIR)/__init__.py $(GEN_STAMP)

proto: $(GEN_STAMP)

# The compatibility guard: buf's lint rules and no breaking change against the recorded
# baseline (the last published API). PROTO_ROOT: a folder holding buf.yaml and protos/.
PROTO_ROOT ?= .
PROTO_BASELINE ?= $(CURDIR)/protos/baseline.binpb
proto-check: $(DEPS_STAMP)
	cd $(PROTO_ROOT) && buf lint && buf breaking --against $(PROTO_BASELINE)

# Record today's protos as the published API that later changes must stay compatible with.
proto-baseline: $(DEPS_STAMP)
	buf build -o protos/baseline.binpb

deps: $(DEPS_STAMP)

run: proto
	$(PYTHON) -m acgs.entrypoints.cli serve

policy-test: proto
	$(PYTHON) -m acgs.entrypoints.cli policy test policy/

lint: proto
	$(PYTHON) -m ruff check service tests bench clients
	$(PYTHON) -m mypy

test: proto proto-check policy-test lint
	$(PYTHON) -m pytest tests

test-unit: proto
	$(PYTHON) -m pytest tests/unit

# make bench BENCH_ARGS=--quick (~1 min); --soak N, --profile: see python3 -m bench.run --help
bench: proto
	$(PYTHON) -m bench.run $(BENCH_ARGS)

# HAProxy (TLS) + 3 servers + PostgreSQL + Redis + Prometheus on loopback, state in .acgs/stack.
stack: proto
	$(PYTHON) -m acgs.entrypoints.stack up

stack-down:
	$(PYTHON) -m acgs.entrypoints.stack down

clean:
	rm -rf $(GEN_DIR) clients/python/src/acgs_client/v1 .pytest_cache .mypy_cache
