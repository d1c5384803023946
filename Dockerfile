# kata-pulse node agent. Build from the repository root:
#   docker build -t kata-pulse:0.1.0 .
# Deployed by the Helm chart in helm/kata-pulse (see its README for the privileges it needs).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: install the agent and its dependencies into a self-contained virtual environment.
# The slim image has no compiler, so a dependency without a wheel fails the build here rather
# than dragging a toolchain into the image.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# --without-pip: the base image's pip installs into the venv, so neither pip nor setuptools ends
# up in the runtime image.
RUN python -m venv --without-pip /opt/kata-pulse
WORKDIR /src
COPY pyproject.toml ./
COPY pulse/ ./pulse/
RUN pip --python /opt/kata-pulse/bin/python install . \
    && /opt/kata-pulse/bin/kata-pulse --help > /dev/null

# --- runtime: the same base (the venv's interpreter symlinks into it) plus the venv, nothing else.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kata-pulse" \
      org.opencontainers.image.description="cAdvisor-compatible Prometheus metrics for Kata Containers pods" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/kata-pulse /opt/kata-pulse
# Bytecode was compiled at install time; the root filesystem is read-only in the chart.
ENV PATH="/opt/kata-pulse/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# uid 0 on purpose, without capabilities (the chart drops ALL): the shim sockets under /run/vc/sbs
# and /run/kata and the CRI socket are root-owned 0600/0660, and connecting to a Unix socket needs
# write permission on it, which root gets from being its owner, not from CAP_DAC_OVERRIDE.
# hadolint ignore=DL3002
USER 0:0
EXPOSE 8090
ENTRYPOINT ["kata-pulse"]
