"""The server: registered methods, their lifecycle, and the handling of each request."""

from .server import Server

__all__ = ["Server"]
