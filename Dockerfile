# syntax=docker/dockerfile:1
# rutter-monitor image. Stage 1 builds wheels of the package and all its dependencies; stage 2 installs them from
# those wheels alone, so the final image has no compiler, no build cache and no network step, and runs unprivileged.
# Build: docker build -t rutter-monitor .   Run: see compose.yml and README.md.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY monitor ./monitor
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="rutter-monitor" \
      org.opencontainers.image.description="Monitoring of Rutter connections: lifecycle state, Prometheus metrics and Slack alerts" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MONITOR_HOST=0.0.0.0 \
    MONITOR_PORT=8080 \
    MONITOR_DATABASE_URL=sqlite+aiosqlite:////data/rutter-monitor.db
RUN groupadd --system --gid 10001 monitor \
    && useradd --system --uid 10001 --gid monitor --home-dir /data --no-create-home --shell /usr/sbin/nologin monitor \
    && install -d -o monitor -g monitor -m 0750 /data
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/rutter_monitor-*.whl
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080
# /healthz answers on the admin listener when MONITOR_ADMIN_PORT is set. The slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('MONITOR_ADMIN_PORT') or os.environ.get('MONITOR_PORT', '8080'); urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
CMD ["rutter-monitor", "run"]
