#!/usr/bin/env bash
# `make test-latest`: the whole suite against the newest releases of the official Python and
# TypeScript SDKs, so a breaking SDK release shows here before users see it.
#
# Everything else comes from uv.lock as in `make test`; only `anthropic` (PyPI) and
# `@anthropic-ai/sdk` (npm) float to their latest versions. It all happens in a throwaway
# directory: the project's .venv and tests/ts/node_modules are left untouched.
#
#   UV   the uv binary (default: .tools/bin/uv, which `make` installs)
#   KEEP set to 1 to keep the throwaway directory for a look afterwards
#   extra arguments go to pytest (e.g. `tests/latest_sdks.sh -k sdk`)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
UV="${UV:-$ROOT/.tools/bin/uv}"
WORK="$(mktemp -d -t claude-gateway-latest.XXXXXX)"
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
cd "$ROOT"

# Python: the locked dev environment minus the SDK, then the newest SDK from PyPI.
"$UV" export --frozen --no-hashes --no-emit-project --no-emit-package anthropic \
    --format requirements-txt --quiet -o "$WORK/locked.txt"
"$UV" venv --quiet --python python3 "$WORK/venv"
"$UV" pip install --quiet --python "$WORK/venv/bin/python" -r "$WORK/locked.txt"
"$UV" pip install --quiet --python "$WORK/venv/bin/python" --upgrade --refresh-package anthropic anthropic
"$UV" pip install --quiet --python "$WORK/venv/bin/python" --no-deps -e .

# TypeScript: the test script beside the newest SDK from npm.
mkdir "$WORK/ts"
cp tests/ts/package.json tests/ts/stream.mjs "$WORK/ts/"
npm install --silent --no-audit --no-fund --prefix "$WORK/ts" @anthropic-ai/sdk@latest

python_sdk="$("$WORK/venv/bin/python" -c 'import anthropic; print(anthropic.__version__)')"
ts_sdk="$(node -p "require('$WORK/ts/node_modules/@anthropic-ai/sdk/package.json').version")"
echo "test-latest: anthropic (Python) $python_sdk, @anthropic-ai/sdk (TypeScript) $ts_sdk"

CLAUDE_GATEWAY_TEST_TS_DIR="$WORK/ts" "$WORK/venv/bin/python" -m pytest -p no:cacheprovider "$@"
