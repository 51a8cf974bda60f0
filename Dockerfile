# Conveyor broker image: multi-stage, non-root, migrations before uvicorn.
# Build here with dev/container.sh (podman, a locally made base image); elsewhere a plain
# `docker build .` uses the public base below.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
RUN python3 -m venv /opt/venv
COPY sdk /src/sdk
COPY pyproject.toml README.md /src/
COPY app /src/app
COPY broker /src/broker
COPY slurm_adapters /src/slurm_adapters
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check /src/sdk /src

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/conveyor --create-home conveyor
COPY --from=build /opt/venv /opt/venv
COPY alembic.ini /app/alembic.ini
COPY migrations /app/migrations
COPY dev/container-entrypoint.sh /app/entrypoint.sh
WORKDIR /app
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    CONVEYOR_DATA_DIR=/var/lib/conveyor \
    CONVEYOR_ALEMBIC_INI=/app/alembic.ini \
    CONVEYOR_HOST=0.0.0.0 \
    CONVEYOR_PORT=8000
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["/app/entrypoint.sh"]
