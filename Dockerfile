# One image for the controller and the node plugin.
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends nvme-cli e2fsprogs xfsprogs util-linux mount \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /
ENTRYPOINT ["rdscsi"]
