# The example calculator server of docker-compose.yml, and a template for images of your own:
# install the package, add your module, run `rpc serve MODULE:ATTR` as the container's command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY rpc ./rpc
RUN pip install '.[cli]'
COPY examples ./examples

# Never run the server as root.
RUN useradd --system --no-create-home --uid 10001 rpc
USER rpc

# `rpc serve` touches this file every 2 s while every worker is connected and its I/O alive;
# `rpc health` fails once it is older than --max-age: this container's own health.
ENV RPC_LIVENESS_FILE=/tmp/rpc-alive
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["rpc", "health", "--max-age", "15"]

# `rpc serve` turns SIGTERM into a graceful stop: calls in flight finish within --grace.
STOPSIGNAL SIGTERM
CMD ["rpc", "serve", "examples.calc:server"]
