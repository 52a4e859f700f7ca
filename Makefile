# claude-gateway: every developer and CI command. `make test` works on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
RUNTIME := $(VENV)/.installed-runtime
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps run test test-fast lint fmt typecheck imports check bench stack clean

$(RUNTIME): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME) pyproject.toml tests/ts/package-lock.json
	$(PY) -m pip install -q -e '.[dev]'
	npm ci --silent --prefix tests/ts
	touch $(STAMP)

install: system-deps $(STAMP)  ## venv with the package and dev tools, TS SDK, redis-server

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

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests bench deploy
	$(VENV)/bin/ruff format --check gateway tests bench deploy
	$(VENV)/bin/hadolint Dockerfile
	shellcheck deploy/local-stack.sh

stack: $(STAMP)  ## the docker-compose topology as local processes (see docs/deploy.md)
	deploy/local-stack.sh

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix gateway tests bench
	$(VENV)/bin/ruff format gateway tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict gateway

imports: $(STAMP)
	$(VENV)/bin/lint-imports

check: lint typecheck imports test  ## what CI runs

bench: $(STAMP)  ## benchmark table (see bench/README.md)
	$(PY) -m bench

clean:
	rm -rf $(VENV) tests/ts/node_modules .mypy_cache .ruff_cache .pytest_cache
