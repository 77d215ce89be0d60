# The image the cluster configs name (cluster/kuberay/*.yaml, cluster/aws.yaml): Ray, the
# unet_search package and everything it imports, installed as `make install` installs them
# (uv, bytecode compiled). CPU by default; for NVIDIA GPUs build with a CUDA torch:
#   docker build -t unet-search:0.1.0 .
#   docker build --build-arg TORCH_BACKEND=cu128 -t unet-search:0.1.0-cu128 .
# cluster/README.md says how to push it where the cluster pulls from.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

# cpu, or a CUDA build of torch (cu126, cu128, ...: uv's --torch-backend values)
ARG TORCH_BACKEND=cpu
ARG UV_VERSION=0.13.9

ENV HF_HUB_OFFLINE=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    PYTHONUNBUFFERED=1

# Ray's autoscaler and KubeRay start nodes through bash and need rsync and ssh on the nodes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash=5.* rsync=3.* openssh-client=1:9.* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/unet-search
COPY pyproject.toml README.md ./
COPY unet_search ./unet_search
COPY search_spaces ./search_spaces

# The same install as `make install`, without the dev tools: uv, --compile-bytecode.
RUN pip install --no-cache-dir "uv==${UV_VERSION}" \
    && uv pip install --system --no-cache --compile-bytecode --torch-backend "${TORCH_BACKEND}" . \
    && unet-search --help > /dev/null

RUN useradd --create-home --uid 1000 ray
USER 1000
WORKDIR /home/ray
