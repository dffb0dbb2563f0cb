"""Runnable examples: ``rpc serve examples.calc:server`` and ``python examples/client.py``."""
