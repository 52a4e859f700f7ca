# syntax=docker/dockerfile:1
# claude-gateway container image.
#
#   docker build -t claude-gateway:local .
#   docker run --rm -p 8080:8080 claude-gateway:local
#
# Two stages on the same pinned base: `build` installs the locked dependencies (wheels only,
# every file checked against requirements.lock's hashes) and the gateway into /opt/venv; the
# runtime stage copies that venv and nothing else: no pip, no setuptools, no source tree, no
# build cache. Pin the base by digest too in your own builds
# (`python:3.11.14-slim-bookworm@sha256:...`) for bit-for-bit rebuilds.
# Size budget: < 200 MB uncompressed (< 70 MB compressed); see docs/deploy.md, "Image".

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY requirements.lock ./
# Wheels only and hash-checked: nothing is compiled, nothing unpinned is fetched.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
        -r requirements.lock

COPY pyproject.toml README.md ./
COPY gateway ./gateway
# The gateway itself, built with the locked setuptools/wheel; then drop the installers.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip uninstall --yes setuptools wheel packaging pip


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="claude-gateway" \
      org.opencontainers.image.description="Rate-limit-aware reverse proxy for the Anthropic Claude API" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, unprivileged uid/gid (Kubernetes runAsUser matches it); no home, no shell login.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gateway

COPY --from=build /opt/venv /opt/venv
COPY config/limits.example.yaml /etc/claude-gateway/limits.example.yaml

# GATEWAY_LIMITS_FILE stays unset (plain pass-through) until you mount a limits file and
# point it there, e.g. -v ./limits.yaml:/etc/claude-gateway/limits.yaml:ro.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_LOG_FORMAT=json

# An empty working directory: the gateway reads an optional `.env` from here.
WORKDIR /app
USER 10001:10001
EXPOSE 8080

# Liveness of the process itself; orchestrators use /readyz for traffic (Redis, draining).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=2)"]

# SIGTERM starts the graceful drain (GATEWAY_SHUTDOWN_DRAIN_SECONDS, then
# GATEWAY_SHUTDOWN_GRACE_SECONDS): give the container at least their sum to stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["claude-gateway"]
CMD ["serve"]
