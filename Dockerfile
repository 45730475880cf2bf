# One image for the pipeline's components (KFP steps run their own command in it) and for the
# KServe predictor (the default entry point). Build: docker build -t recsys-mlops:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# LightGBM's wheel needs the OpenMP runtime, which the slim image lacks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/recsys

# Dependencies first (the pinned runtime set: requirements.lock without the test tools), so
# code changes do not re-install them.
COPY requirements-runtime.lock ./
RUN pip install -r requirements-runtime.lock

COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
RUN pip install --no-deps . \
    && rm -rf build *.egg-info

RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin recsys
USER 1000:1000
WORKDIR /home/recsys

# 8080: REST (KServe v1 and v2, /metrics); 8081: gRPC (v2).
EXPOSE 8080 8081
# The model comes from $MODEL_DIR, else /mnt/models (KServe's storage initializer mount).
ENTRYPOINT ["python", "-m", "serving"]
