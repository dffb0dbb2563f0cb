"""The ``rpc`` command (:mod:`rpc.cli.main`): serving as a daemon with worker processes, calling,
status and load tests."""
