#!/usr/bin/env bash
# The docker-compose.yml topology without containers: Redis, two gateway replicas, nginx
# in front of them and Prometheus scraping both, as local processes on 127.0.0.1, built from
# the same files (docker-compose.yml for Redis's flags and the gateways' settings and limits
# file, deploy/nginx/nginx.conf, deploy/prometheus/). Only ports and paths are rewritten.
#
#   deploy/local-stack.sh                          # until Ctrl-C (or STACK_TIMEOUT)
#   GATEWAY_UPSTREAM_URL=http://127.0.0.1:9999 STACK_TIMEOUT=120 deploy/local-stack.sh
#
# Needs: redis-server, nginx, prometheus (STACK_PROMETHEUS=0 skips it) and the project venv.
# Settings (environment):
#   GATEWAY_*          override the gateways' settings from docker-compose.yml (HOST, PORT
#                      and REDIS_URL are always the local ones)
#   STACK_DIR          where configs, logs and stack.env go (default: a temporary directory,
#                      removed on exit unless STACK_KEEP=1)
#   STACK_LB_PORT      nginx port (default 8080; 0 = a free one, like the other ports)
#   STACK_TIMEOUT      stop everything after this many seconds once ready (default 3600)
#   STACK_STARTUP_SECONDS  how long each process may take to answer (default 20)
#   STACK_PROMETHEUS   1 (default) or 0
#   CLAUDE_GATEWAY     the gateway command (default: .venv/bin/claude-gateway, as the image)
# Once everything answers, it writes $STACK_DIR/stack.env (LB_URL, GATEWAY_1_URL, ...), then
# $STACK_DIR/ready, and prints the URLs; $STACK_DIR/pids lists what it started. Every process
# it started is stopped on exit (SIGTERM, then SIGKILL after 45 s).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${STACK_PYTHON:-$ROOT/.venv/bin/python}"
GATEWAY_CMD="${CLAUDE_GATEWAY:-$ROOT/.venv/bin/claude-gateway}"
TIMEOUT="${STACK_TIMEOUT:-3600}"
WITH_PROMETHEUS="${STACK_PROMETHEUS:-1}"
STARTUP_SECONDS="${STACK_STARTUP_SECONDS:-20}"

if [[ -n "${STACK_DIR:-}" ]]; then
    DIR="$STACK_DIR"
    mkdir -p "$DIR"
    OWN_DIR=0
else
    DIR="$(mktemp -d "${TMPDIR:-/tmp}/cgw-stack.XXXXXX")"
    OWN_DIR=1
fi
DIR="$(cd "$DIR" && pwd)"

PIDS=()
NAMES=()

log() { printf 'local-stack: %s\n' "$*" >&2; }

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local i pid deadline
    # Reverse start order: the balancer first, Redis last.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
    done
    deadline=$((SECONDS + 45))   # > the gateways' drain + grace with nothing in flight
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid="${PIDS[i]}"
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "${NAMES[i]} (pid $pid) did not stop: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if ((OWN_DIR)) && [[ "${STACK_KEEP:-0}" != 1 ]]; then
        cd / && rm -rf "$DIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME COMMAND...: run in the background, output to $DIR/NAME.log.
start() {
    local name="$1"
    shift
    "$@" >"$DIR/$name.log" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
    printf '%s %s\n' "$name" "$!" >>"$DIR/pids"
}

# wait_http NAME URL: until URL answers 200, while the last started process lives.
wait_http() {
    local name="$1" url="$2" pid="${PIDS[${#PIDS[@]} - 1]}" deadline=$((SECONDS + STARTUP_SECONDS))
    until "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
        "$url" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS > deadline)); then
            log "$name did not become ready at $url; its log ($DIR/$name.log):"
            tail -n 30 "$DIR/$name.log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
}

# compose VALUE-KIND: read docker-compose.yml (see the Python below).
compose() {
    "$PY" - "$ROOT/docker-compose.yml" "$1" <<'PYTHON'
"""redis-args: redis' command flags, one per line. gateway-env: the gateway replicas'
settings as KEY=VALUE lines, ${VAR:-default} resolved from the environment, caller GATEWAY_*
overrides applied, and a mounted limits file mapped back to its path in the repository."""
import os, re, sys
from pathlib import Path
import yaml

path, kind = Path(sys.argv[1]), sys.argv[2]
services = yaml.safe_load(path.read_text())["services"]
if kind == "redis-args":
    command = services["redis"]["command"]
    assert command[0] == "redis-server", command
    print("\n".join(command[1:]))
    sys.exit()
gateway = services["gateway-1"]
def resolve(value):
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m[1]) or m[2], str(value))
env = {key: resolve(value) for key, value in gateway["environment"].items()}
mounts = dict(reversed(v.split(":")[:2]) for v in gateway.get("volumes", []))
if env.get("GATEWAY_LIMITS_FILE") in mounts:
    env["GATEWAY_LIMITS_FILE"] = str((path.parent / mounts[env["GATEWAY_LIMITS_FILE"]]).resolve())
env.update({k: v for k, v in os.environ.items() if k.startswith("GATEWAY_")})
print("\n".join(f"{key}={value}" for key, value in env.items()))
PYTHON
}

for tool in redis-server nginx; do
    command -v "$tool" >/dev/null || { log "$tool not found (apt-get install $tool)"; exit 1; }
done
if [[ "$WITH_PROMETHEUS" == 1 ]] && ! command -v prometheus >/dev/null; then
    log "prometheus not found (apt-get install prometheus, or STACK_PROMETHEUS=0)"
    exit 1
fi
[[ -x "$GATEWAY_CMD" ]] || { log "$GATEWAY_CMD not found: run make install"; exit 1; }

# Every process runs in $DIR: the gateway reads an optional .env from its working directory.
cd "$DIR"
rm -f "$DIR/ready" "$DIR/pids" "$DIR/stack.env"
# Distinct ports from below the ephemeral range, so no outgoing connection (a gateway's to
# Redis, say) takes one before its server binds it: bench/ports.py says why. All in one
# call: ports.py only knows the ports it handed out itself, and a port chosen elsewhere but
# not bound yet looks free to it, so STACK_LB_PORT=0 takes the balancer's from here too.
{ read -r REDIS_PORT; read -r G1_PORT; read -r G2_PORT; read -r PROM_PORT; read -r FREE_LB_PORT; } \
    < <("$PY" "$ROOT/bench/ports.py" 5)
LB_PORT="${STACK_LB_PORT:-8080}"
if [[ "$LB_PORT" == 0 ]]; then
    LB_PORT="$FREE_LB_PORT"
fi

# Redis: the compose service's flags.
redis_flags="$(compose redis-args)"
mapfile -t redis_args <<<"$redis_flags"
mkdir -p "$DIR/redis"
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR/redis" \
    "${redis_args[@]}"
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
    kill -0 "${PIDS[0]}" 2>/dev/null || { tail -n 20 "$DIR/redis.log" >&2; exit 1; }
    sleep 0.05
done

# Gateways: the compose replicas' settings; the same entrypoint as the image.
gateway_settings="$(compose gateway-env)"
mapfile -t gateway_env <<<"$gateway_settings"
for n in 1 2; do
    port_var="G${n}_PORT"
    start "gateway-$n" env -i PATH="$PATH" HOME="${HOME:-/nonexistent}" PYTHONPATH="$ROOT" \
        "${gateway_env[@]}" GATEWAY_HOST=127.0.0.1 GATEWAY_PORT="${!port_var}" \
        GATEWAY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" "$GATEWAY_CMD" serve
    wait_http "gateway-$n" "http://127.0.0.1:${!port_var}/readyz"
done

# nginx: deploy/nginx/nginx.conf with local ports and paths (each rewrite must apply once).
mkdir -p "$DIR/nginx-tmp"
sed -e "s|^pid /tmp/nginx.pid;|pid $DIR/nginx.pid;|" \
    -e "s|^error_log /dev/stderr |error_log $DIR/nginx-error.log |" \
    -e "s|access_log /dev/stdout gateway;|access_log $DIR/nginx-access.log gateway;|" \
    -e "s|server gateway-1:8080 |server 127.0.0.1:$G1_PORT |" \
    -e "s|server gateway-2:8080 |server 127.0.0.1:$G2_PORT |" \
    -e "s|listen 8080;|listen 127.0.0.1:$LB_PORT;|" \
    -e "s|^http {|http {\n    client_body_temp_path $DIR/nginx-tmp/body;\n    proxy_temp_path $DIR/nginx-tmp/proxy;\n    fastcgi_temp_path $DIR/nginx-tmp/fastcgi;\n    uwsgi_temp_path $DIR/nginx-tmp/uwsgi;\n    scgi_temp_path $DIR/nginx-tmp/scgi;|" \
    "$ROOT/deploy/nginx/nginx.conf" >"$DIR/nginx.conf"
for expected in "pid $DIR/" "error_log $DIR/" "access_log $DIR/" "server 127.0.0.1:$G1_PORT " \
    "server 127.0.0.1:$G2_PORT " "listen 127.0.0.1:$LB_PORT;" "client_body_temp_path $DIR/"; do
    if [[ "$(grep -cF -- "$expected" "$DIR/nginx.conf")" != 1 ]]; then
        log "deploy/nginx/nginx.conf changed: could not rewrite '$expected' for local use"
        exit 1
    fi
done
nginx -t -q -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/nginx-error.log"
start nginx nginx -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/nginx-error.log" -g "daemon off;"
wait_http nginx "http://127.0.0.1:$LB_PORT/nginx-healthz"

# Prometheus: deploy/prometheus/prometheus.yml with local targets, rules beside it.
PROM_URL=""
if [[ "$WITH_PROMETHEUS" == 1 ]]; then
    mkdir -p "$DIR/prometheus"
    ln -sfn "$ROOT/deploy/prometheus/rules" "$DIR/prometheus/rules"
    sed -e "s|gateway-1:8080|127.0.0.1:$G1_PORT|" -e "s|gateway-2:8080|127.0.0.1:$G2_PORT|" \
        "$ROOT/deploy/prometheus/prometheus.yml" >"$DIR/prometheus/prometheus.yml"
    start prometheus prometheus --config.file="$DIR/prometheus/prometheus.yml" \
        --storage.tsdb.path="$DIR/prometheus/data" \
        --web.listen-address="127.0.0.1:$PROM_PORT"
    PROM_URL="http://127.0.0.1:$PROM_PORT"
    wait_http prometheus "$PROM_URL/-/ready"
fi

cat >"$DIR/stack.env" <<EOF
STACK_DIR=$DIR
LB_URL=http://127.0.0.1:$LB_PORT
GATEWAY_1_URL=http://127.0.0.1:$G1_PORT
GATEWAY_2_URL=http://127.0.0.1:$G2_PORT
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
PROMETHEUS_URL=$PROM_URL
EOF
touch "$DIR/ready"
log "ready (stops in ${TIMEOUT}s or on Ctrl-C); logs in $DIR"
cat "$DIR/stack.env" >&2

# Run until the deadline, a signal, or any process exiting on its own.
deadline=$((SECONDS + TIMEOUT))
while ((SECONDS < deadline)); do
    for i in "${!PIDS[@]}"; do
        if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
            log "${NAMES[i]} exited; stopping the stack"
            tail -n 20 "$DIR/${NAMES[i]}.log" >&2 || true
            exit 1
        fi
    done
    sleep 0.2
done
log "STACK_TIMEOUT (${TIMEOUT}s) reached; stopping"
