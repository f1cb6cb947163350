# rnn-serve images, two targets from one file:
#   docker build --target cpu -t rnn-serve:cpu .     slim Python, NumPy on the CPU
#   docker build --target gpu -t rnn-serve:gpu .     CUDA 12 runtime + CuPy (RNN_SERVE_DEVICE=auto)
# Runtime pins come from pyproject.toml's [project] dependencies (and its `gpu` extra), so the
# image and `pip install .` never drift apart. No torch, onnxruntime or dev tools in either image.
# tests/test_deploy_static.py runs the cpu target's steps in a fresh virtualenv and lints this file.

# ---- cpu: build the virtualenv ------------------------------------------------------------------
FROM python:3.11.13-slim-bookworm AS cpu-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml ./
# The runtime pins plus the `fast` extra (Numba gate kernels for the CPU engine); pip and
# setuptools are removed afterwards: the runtime never installs anything.
RUN python -m venv /opt/venv \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['fast']))" > requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r requirements.txt \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# ---- cpu: the runtime image ---------------------------------------------------------------------
FROM python:3.11.13-slim-bookworm AS cpu
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RNN_SERVE_PORT=8000 \
    RNN_SERVE_DEVICE=cpu
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /app rnn
COPY --from=cpu-build /opt/venv /opt/venv
WORKDIR /app
COPY model_core ./model_core
COPY service ./service
COPY models ./models
# byte-compile once here: the non-root user cannot write __pycache__ at startup
RUN python -m compileall -q model_core service
USER 10001
EXPOSE 8000
# slim has no curl: urllib exits non-zero on a 503 (models not loaded, session store unreachable)
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RNN_SERVE_PORT', '8000') + '/v2/health/ready', timeout=4)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0"]

# ---- gpu: Python 3.11 and the virtualenv (uv-managed CPython: the CUDA base ships no 3.11) ------
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM nvidia/cuda:12.6.3-runtime-ubuntu22.04 AS gpu-build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_NO_CACHE=1
WORKDIR /build
COPY pyproject.toml ./
RUN uv python install 3.11.13 \
    && uv venv --python 3.11.13 /opt/venv \
    && /opt/venv/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['gpu'] + p['optional-dependencies']['fast']))" > requirements.txt \
    && uv pip install --python /opt/venv/bin/python -r requirements.txt

# ---- gpu: the runtime image ---------------------------------------------------------------------
FROM nvidia/cuda:12.6.3-runtime-ubuntu22.04 AS gpu
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CUPY_CACHE_DIR=/tmp/cupy \
    RNN_SERVE_PORT=8000 \
    RNN_SERVE_DEVICE=auto
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /app rnn
COPY --from=gpu-build /opt/python /opt/python
COPY --from=gpu-build /opt/venv /opt/venv
WORKDIR /app
COPY model_core ./model_core
COPY service ./service
COPY models ./models
RUN python -m compileall -q model_core service
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RNN_SERVE_PORT', '8000') + '/v2/health/ready', timeout=4)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0"]
