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
RUN pip install .
COPY examples ./examples

# Never run the server as root.
RUN useradd --system --no-create-home --uid 10001 rpc
USER rpc

# `rpc serve` turns SIGTERM into a graceful stop: calls in flight finish within --grace.
STOPSIGNAL SIGTERM
CMD ["rpc", "serve", "examples.calc:server"]
