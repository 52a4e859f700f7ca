# claude-gateway: every developer and CI command. `make test` works on a fresh machine.
#
# Python packages come only from uv.lock (runtime, tests and tools, every file hash-pinned),
# installed by a pinned uv (requirements-uv.txt); the TypeScript SDK from tests/ts/package-lock.json.
VENV    ?= .venv
PY      := $(VENV)/bin/python
TOOLS   := .tools
UV      := $(TOOLS)/bin/uv
STAMP   := $(VENV)/.installed-dev
RUNTIME := $(VENV)/.installed-runtime
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# uv: never fetch a Python of its own (the machine's python3 is the one we test), install into
# $(VENV), and use the public index whatever a local pip configuration says.
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export UV_PYTHON := python3
# --compile-bytecode: pip and the image install .pyc files, uv does not unless asked; without
# them (and with PYTHONDONTWRITEBYTECODE=1) every start compiles each module from source and
# keeps the compiler's memory: 15 MB more idle RSS (84.9 against 69.5 MB, Redis limits, #18).
EXPORT  := $(UV) export --frozen --no-dev --extra otel --group build --no-emit-project --format requirements-txt --quiet

.PHONY: install system-deps run test test-fast test-latest lint lock lock-check fmt typecheck \
	imports check bench perf-table stack clean

$(UV): requirements-uv.txt
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --require-hashes --no-deps -r requirements-uv.txt
	touch $(UV)

$(RUNTIME): $(UV) pyproject.toml uv.lock Makefile
	$(UV) sync --locked --no-dev --extra otel --inexact --quiet --compile-bytecode
	touch $(RUNTIME)

$(STAMP): $(UV) pyproject.toml uv.lock tests/ts/package-lock.json Makefile
	$(UV) sync --locked --quiet --compile-bytecode
	npm ci --silent --prefix tests/ts
	touch $(RUNTIME) $(STAMP)

install: system-deps $(STAMP)  ## venv from uv.lock (package, tests, tools), TS SDK, redis-server

system-deps:  ## redis-server, node and prometheus (+promtool) from the distribution, when missing
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v node >/dev/null || missing="$$missing nodejs npm"; \
	command -v promtool >/dev/null && command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v shellcheck >/dev/null || missing="$$missing shellcheck"; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

run: $(RUNTIME)  ## the gateway on 127.0.0.1:8080, in-process limits, no Redis needed
	$(PY) -m gateway serve

test: install  ## the whole suite (real redis-server, real SDKs)
	$(PY) -m pytest

test-fast: $(STAMP)  ## everything that needs no redis-server or node
	$(PY) -m pytest -m "not redis and not node"

test-latest: $(UV) system-deps  ## the suite against the newest Python and TypeScript SDKs, in a throwaway venv
	UV=$(abspath $(UV)) tests/latest_sdks.sh

lock:  $(UV)  ## after changing dependencies: re-resolve uv.lock and export requirements.lock
	$(UV) lock
	$(EXPORT) > requirements.lock

lock-check: $(UV)  ## fail when pyproject.toml, uv.lock and requirements.lock disagree
	$(UV) lock --check
	$(EXPORT) | diff -u requirements.lock - >/dev/null \
		|| { echo "requirements.lock is not uv.lock's export: run 'make lock'" >&2; exit 1; }

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests bench deploy
	$(VENV)/bin/ruff format --check gateway tests bench deploy
	$(VENV)/bin/hadolint Dockerfile
	shellcheck deploy/local-stack.sh tests/latest_sdks.sh

stack: $(STAMP)  ## the docker-compose topology as local processes (see docs/deploy.md)
	deploy/local-stack.sh

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix gateway tests bench
	$(VENV)/bin/ruff format gateway tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict gateway tests bench

imports: $(STAMP)
	$(VENV)/bin/lint-imports

check: lock-check lint typecheck imports test  ## what CI runs

bench: $(STAMP)  ## benchmark table (see bench/README.md)
	$(PY) -m bench

perf-table: $(STAMP)  ## README's Performance table: three bench runs at production defaults (~30 min)
	$(PY) -m bench.readme_table

clean:
	rm -rf $(VENV) $(TOOLS) tests/ts/node_modules .mypy_cache .ruff_cache .pytest_cache
