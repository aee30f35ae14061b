# rdscsi images: two targets of one build, the controller by default.
#   docker build --target controller -t <registry>/rdscsi-controller:<tag> .
#   docker build --target node       -t <registry>/rdscsi-node:<tag> .
#
# Base: Python 3.11 on Debian 12 "bookworm", pinned by digest. The Debian release fixes the
# versions of the node's tools (xfsprogs 6.1, e2fsprogs, nvme-cli): mkfs features follow
# them, and filesystems made here must mount on the oldest kernel we support
# (docs/install.md). To move the base, change the tag and the digest together (and the
# release named in the check below); tests/image checks all three agree.
ARG BASE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${BASE} AS base
ARG BASE
# Refuse an unpinned base (e.g. --build-arg BASE=python:3.11-slim) or another release.
RUN case "${BASE}" in *@sha256:*) ;; *) echo "BASE must be pinned by digest: ${BASE}" >&2; exit 1 ;; esac \
    && . /etc/os-release \
    && if [ "${VERSION_CODENAME}" != bookworm ]; then echo "base is ${VERSION_CODENAME}, not bookworm" >&2; exit 1; fi
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# --- builder: the locked dependencies and the project's wheel in /opt/rdscsi ---------------
FROM base AS builder
WORKDIR /src
COPY deploy/image/build.lock deploy/image/runtime.lock ./
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r build.lock \
    && python -m venv --without-pip /opt/rdscsi \
    && /opt/build/bin/pip --python /opt/rdscsi/bin/python install --no-cache-dir \
        --require-hashes --only-binary=:all: -r runtime.lock
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels . \
    && /opt/build/bin/pip --python /opt/rdscsi/bin/python install --no-cache-dir --no-deps \
        /wheels/rdscsi-*.whl

# --- runtime: tini as PID 1 (signals forwarded, children reaped) and the environment ----------
FROM base AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/rdscsi /opt/rdscsi
ENV PATH=/opt/rdscsi/bin:${PATH}
ENTRYPOINT ["/usr/bin/tini", "--", "rdscsi"]

# --- node: root, with the programs the node code runs (tests/image lists them) ----------------
FROM runtime AS node
RUN apt-get update \
    && apt-get install -y --no-install-recommends nvme-cli e2fsprogs xfsprogs util-linux mount kmod \
    && rm -rf /var/lib/apt/lists/*

# --- controller: no node tools, an unprivileged user (the manifests run it as 65532 too) -----
FROM runtime AS controller
USER 65532:65532
