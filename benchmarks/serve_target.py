"""The Server that ``python -m rpc serve benchmarks.serve_target:server`` runs in the
server-processes cases, so that they measure the product's own ``--processes``."""

from __future__ import annotations

from rpc import Server

from . import workloads

server = Server(server_id="bench-serve", serializer="pickle")
for _name, _func in (("add", workloads.add), ("echo", workloads.echo),
                     ("burn", workloads.burn)):
    server.register_function(_func, _name)
