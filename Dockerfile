# rnn-serve images, two targets from one file, both on the same slim Python base:
#   docker build --target cpu -t rnn-serve:cpu .     NumPy and the engine's C kernels on the CPU
#   docker build --target gpu -t rnn-serve:gpu .     + CuPy and CUDA 12's libraries as PyPI wheels
# Everything comes from Debian and PyPI; on a GPU host only the NVIDIA driver comes from outside,
# mounted by the NVIDIA Container Toolkit. Behind a TLS-intercepting proxy, hand pip the CA bundle
# as a build secret (read for one step, kept in no layer):
#   docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt --target cpu ...
# deploy/image_venv.py builds and trims the virtualenv (docs/deploy.md: what stays and why).
# tests/deploy/test_deploy_static.py runs the cpu target's steps in a fresh virtualenv and lints this file;
# scripts/deploy_check.py builds both targets and runs them under a real engine.

# ---- build: gcc for the engine's C kernels, binutils' strip; one virtualenv per target, then the app --
# The venvs depend on pyproject.toml and image_venv.py only: a change to the app rebuilds neither.
FROM python:3.11.13-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils=2.40-2 gcc=4:12.2.0-3 libc6-dev=2.36-9+deb12u14 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml deploy/image_venv.py ./

FROM build AS cpu-build
RUN --mount=type=secret,id=ca-bundle python image_venv.py /opt/venv
COPY model_core app/model_core
COPY service app/service
COPY models app/models
# byte-compile here: the image's non-root user cannot write __pycache__ at startup; the C kernels
# are compiled by the engine's own loader into app/model_core/native (both images copy this app)
RUN python -m compileall -q app/model_core app/service \
    && python image_venv.py /opt/venv --app app

FROM build AS gpu-build
RUN --mount=type=secret,id=ca-bundle python image_venv.py /opt/venv gpu

# ---- what both runtime images share ---------------------------------------------------------------
FROM python:3.11.13-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RNN_SERVE_PORT=8000
# libgomp1: the C kernels' OpenMP threads (RNN_SERVE_ENGINE_THREADS). `apt-get clean` also drops
# apt's 70 MB package caches where the base has no docker-clean config. The runtime never installs
# anything after this: no pip in the image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.2.0-14+deb12u1 \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /app rnn \
    && rm -rf /usr/local/lib/python3.11/site-packages/pip /usr/local/bin/pip*
WORKDIR /app
USER 10001
# 8000: HTTP and WebSocket; 8001: gRPC (RNN_SERVE_GRPC_PORT, 0 turns it off)
EXPOSE 8000 8001
# slim has no curl: urllib exits non-zero on a 503 (models not loaded, session store unreachable)
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RNN_SERVE_PORT', '8000') + '/v2/health/ready', timeout=4)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0"]

# ---- cpu ----------------------------------------------------------------------------------------
FROM runtime AS cpu
ENV RNN_SERVE_DEVICE=cpu
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-build /build/app /app

# ---- gpu: CuPy on CUDA 12 wheels; without a usable GPU it serves on the CPU and says so ----------
FROM runtime AS gpu
ENV RNN_SERVE_DEVICE=auto \
    CUPY_CACHE_DIR=/tmp/cupy
COPY --from=gpu-build /opt/venv /opt/venv
COPY --from=cpu-build /build/app /app
