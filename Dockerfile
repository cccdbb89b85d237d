# syntax=docker/dockerfile:1
# One image for every tongban process: the four services and the operator console. The command
# picks the process:
#
#   docker run ... tongban:dev python -m services.intake      (routing, approval, delivery, console)
#   docker run ... tongban:dev tongban --help                  (the command line)
#
# Build from the repository root: docker build -t tongban:dev .
# Configuration is by TONGBAN_* environment variables only (services/common/settings.py);
# deploy/compose.yaml and deploy/kubernetes/ set them.

ARG PYTHON_IMAGE=python:3.11-slim

# -- build: the project and its dependencies in a virtual environment -------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/tongban
WORKDIR /src
# Only what the package is built from (pyproject.toml's packages: services*, contracts*).
COPY pyproject.toml ./
COPY contracts ./contracts
COPY services ./services
# A regular (not editable) install: the migrations, schemas and AsyncAPI file are package data.
RUN /opt/tongban/bin/pip install --upgrade pip \
    && /opt/tongban/bin/pip install .

# -- runtime: the virtual environment and a non-root user, nothing else ----------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 tongban \
    && useradd --system --uid 10001 --gid tongban --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin tongban
COPY --from=build /opt/tongban /opt/tongban
ENV PATH=/opt/tongban/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TONGBAN_HTTP_HOST=0.0.0.0 \
    TONGBAN_LOG_JSON=true
# An empty working directory: `python -m services.<name>` imports the installed package.
WORKDIR /srv/tongban
USER 10001:10001
# console 8000, intake 8001, routing 8002, approval 8003, delivery 8004 (DESIGN.md §5)
EXPOSE 8000 8001 8002 8003 8004
# Liveness of whichever process runs: it listens on TONGBAN_HTTP_PORT (set it; compose and the
# Kubernetes manifests do). Kubernetes ignores HEALTHCHECK and uses the Deployments' probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TONGBAN_HTTP_PORT', '8000'), timeout=2)"]
CMD ["tongban", "--help"]
