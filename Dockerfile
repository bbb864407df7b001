# The TruckLLM gateway image (docs/deploy.md). Build and smoke-test it: deploy/image-smoke.sh
#
#   podman build --format docker -t truckllm .        (docker build -t truckllm . works the same)
#   podman run -p 8080:8080 -e OPENAI_API_KEY=sk-... truckllm
#
# BASE_IMAGE: any glibc image with python3 >= 3.11 and its venv module, used for both stages
# (the official python:3.11-slim-bookworm by default; deploy/image-smoke.sh passes one made
# locally from Debian packages). Every third-party package comes from requirements.lock, pinned
# and checked against its sha256 hashes; the wheel of TruckLLM itself is built here from source
# with the build backend pinned the same way (requirements-build.lock).
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY requirements.lock requirements-build.lock ./
# /build: the build backend only. /opt/truckllm: what the image runs, made without pip in it.
RUN python3 -m venv /build \
 && /build/bin/pip install -q --require-hashes -r requirements-build.lock \
 && python3 -m venv --without-pip /opt/truckllm \
 && /build/bin/pip --python /opt/truckllm/bin/python install -q --require-hashes -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN /build/bin/pip wheel -q --no-deps --no-build-isolation -w /wheels . \
 && /build/bin/pip --python /opt/truckllm/bin/python install -q --no-index --no-deps /wheels/truckllm-*.whl \
 && /opt/truckllm/bin/truckllm version

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="TruckLLM" \
      org.opencontainers.image.description="OpenAI-compatible gateway and load balancer for many LLM providers and API keys" \
      org.opencontainers.image.licenses="Apache-2.0"
# A system user without a shell or home; the gateway writes nothing but what a file store or a
# file sink is configured to write (mount a volume there, owned by uid 10001).
RUN groupadd --gid 10001 truckllm \
 && useradd --uid 10001 --gid truckllm --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin truckllm
COPY --from=builder /opt/truckllm /opt/truckllm
COPY deploy/config.yaml /etc/truckllm/config.yaml
ENV PATH=/opt/truckllm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TRUCKLLM_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
USER 10001:10001
EXPOSE 8080
# The gateway is PID 1 (exec form, no shell): SIGTERM drains (stop accepting, /readyz 503,
# in-flight requests and streams finish up to server.shutdown_timeout, the usage ledger is
# flushed, exit 0); a second SIGTERM forces the exit; SIGHUP reloads the configuration.
STOPSIGNAL SIGTERM
# Kept in docker-format images (podman build --format docker); OCI images drop HEALTHCHECK.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request as r; r.urlopen(os.environ['TRUCKLLM_HEALTHCHECK_URL'], timeout=2)"]
CMD ["truckllm", "-config", "/etc/truckllm/config.yaml"]
