# syntax=docker/dockerfile:1
# The image scheduled runbooks run in (`opsctl render schedules`), built by `opsctl render ci`:
#   docker build -f templates/ci/opsctl.Dockerfile -t REGISTRY/opsctl:TAG .
# opsctl in a virtualenv, and this repository's ops root (opsctl.yaml, runbooks/, templates/,
# loadtests/) at /ops, where the CronJobs set OPSCTL_ROOT. Runs as uid 10001, as they do;
# journals go to /ops/.opsctl, an emptyDir there (and to the backup bucket).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md /src/
COPY opsctl /src/opsctl
RUN pip install /src && python -m compileall -q /opt/venv

FROM python:${PYTHON_VERSION}-slim
RUN useradd --system --uid 10001 --create-home --home-dir /home/opsctl opsctl
COPY --from=build /opt/venv /opt/venv
COPY opsctl.yaml /ops/opsctl.yaml
COPY runbooks /ops/runbooks
COPY templates /ops/templates
COPY loadtests /ops/loadtests
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 OPSCTL_ROOT=/ops CI=true
WORKDIR /ops
USER 10001
ENTRYPOINT ["opsctl"]
