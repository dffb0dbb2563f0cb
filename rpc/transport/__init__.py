"""Broker connections: URLs and failover, connecting, and the links that carry frames."""
