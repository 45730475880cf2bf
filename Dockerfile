# Two images from one file, both installing this package over a pinned set:
#   serving (the default target): the KServe predictor and the events service, over
#     requirements-runtime.lock. docker build -t recsys-mlops:0.1.0 .
#   pipeline: the KFP steps (training, monitoring, data sources), over requirements-pipeline.lock,
#     which adds alibi-detect, DVC and Dask (about 1 GB the predictor does not need).
#     docker build --target pipeline -t recsys-mlops-pipeline:0.1.0 .
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# LightGBM's wheel needs the OpenMP runtime, which the slim image lacks. Not version-pinned:
# Debian's security updates replace the pinned version, and the base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin recsys

WORKDIR /opt/recsys

FROM base AS pipeline
# Dependencies first, so code changes do not re-install them.
COPY requirements-pipeline.lock ./
RUN pip install -r requirements-pipeline.lock
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info
USER 1000:1000
WORKDIR /home/recsys
# KFP runs each step's own command in this image; by itself it prints the CLI's help.
ENTRYPOINT ["recsys"]
CMD ["--help"]

FROM base AS serving
# The pinned runtime set: requirements.lock without the test tools and the extras.
COPY requirements-runtime.lock ./
RUN pip install -r requirements-runtime.lock
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info
USER 1000:1000
WORKDIR /home/recsys
# 8080: REST (KServe v1 and v2, /metrics); 8081: gRPC (v2).
EXPOSE 8080 8081
# The model comes from $MODEL_DIR, else /mnt/models (KServe's storage initializer mount).
ENTRYPOINT ["python", "-m", "serving"]
