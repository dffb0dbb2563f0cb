"""Clients: the blocking :class:`~rpc.Proxy` and the asyncio :class:`~rpc.AsyncProxy`."""

from .aio import AsyncProxy
from .proxy import BroadcastReply, Proxy

__all__ = ["AsyncProxy", "BroadcastReply", "Proxy"]
