"""A small userspace TCP proxy for fault injection: loopback only, no root, no external tool.

It listens on ``127.0.0.1:<ephemeral>`` and forwards each accepted connection to an upstream
(the test broker). Between the two it can:

* ``pass``: forward bytes both ways (the default);
* ``refuse``: accept new connections and close them at once;
* ``blackhole(up=, down=)``: read and drop the bytes of one or both directions, keeping the
  sockets open (a silent partition: no FIN, no RST, no bytes — also the end-of-stream of a
  blackholed direction is swallowed, so only heartbeats can tell);
* ``latency``: sleep that many seconds before forwarding each chunk;
* ``split_down(tail, pause)``: send the last ``tail`` bytes of each chunk the broker sends over
  :data:`SPLIT_OVER` bytes ``pause`` seconds after the rest (a message's short last segment);
* ``reset_all()``: abort every live pair with ``SO_LINGER 0``, so both peers see a TCP RST.

"up" is client to broker, "down" broker to client. The proxy runs an asyncio loop in a daemon
thread; every control method is thread-safe and returns once the loop has applied it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

_LINGER_ZERO = struct.pack("ii", 1, 0)
#: Chunks from the broker this long or shorter pass whole under ``split_down`` (a confirm, a
#: heartbeat).
SPLIT_OVER = 64


class _Pair:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.bytes_up = 0
        self.bytes_down = 0

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
                except OSError:
                    pass
            writer.transport.abort()


class TCPProxy:
    """``with TCPProxy(("127.0.0.1", 5672)) as proxy: url = proxy.url(...)``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.blackhole_up = False
        self.blackhole_down = False
        self.latency = 0.0
        self.split_tail = 0
        self.split_pause = 0.0
        #: Connections accepted so far (including refused ones) and live pairs now.
        self.accepted = 0
        self.pairs: set[_Pair] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcpproxy",
                                        daemon=True)
        self._thread.start()
        self.port: int = self._call(self._listen)

    # -- control, from any thread ----------------------------------------------------------------

    def url(self, user: str = "guest", password: str = "guest", vhost: str = "/") -> str:
        vhost_part = "" if vhost == "/" else vhost
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/{vhost_part}"

    def set_pass(self) -> None:
        self._apply(mode="pass", blackhole_up=False, blackhole_down=False)

    def refuse(self) -> None:
        """Refuse new connections (accept and close them); live ones are left alone."""
        self._apply(mode="refuse")

    def blackhole(self, *, up: bool = True, down: bool = True) -> None:
        """Drop the bytes of the chosen directions, on live and new connections."""
        self._apply(mode="pass", blackhole_up=up, blackhole_down=down)

    def set_latency(self, seconds: float) -> None:
        self._apply(latency=seconds)

    def split_down(self, tail: int, pause: float) -> None:
        """Send the last ``tail`` bytes of each longer chunk from the broker ``pause`` s late."""
        self._apply(split_tail=tail, split_pause=pause)

    def reset_all(self) -> int:
        """Abort every live connection with a RST; returns how many pairs were reset."""

        def reset() -> int:
            pairs = list(self.pairs)
            self.pairs.clear()
            for pair in pairs:
                pair.abort()
            return len(pairs)

        return self._call_sync(reset)

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for pair in list(self.pairs):
                pair.abort()
            self.pairs.clear()

        self._call(shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> TCPProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop's side -------------------------------------------------------------------------

    def _apply(self, **settings: Any) -> None:
        def apply() -> None:
            for name, value in settings.items():
                setattr(self, name, value)

        self._call_sync(apply)

    def _call_sync(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return self._call(run)

    def _call(self, coro_fn: Callable[[], Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(10)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":
            cw.transport.abort()
            return
        try:
            ur, uw = await asyncio.open_connection(*self.upstream)
        except OSError:
            cw.transport.abort()
            return
        pair = _Pair(cw, uw)
        self.pairs.add(pair)
        try:
            await asyncio.gather(self._pipe(pair, cr, uw, up=True),
                                 self._pipe(pair, ur, cw, up=False))
        finally:
            self.pairs.discard(pair)

    async def _pipe(self, pair: _Pair, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, *, up: bool) -> None:
        try:
            while data := await reader.read(65536):
                if self.latency:
                    await asyncio.sleep(self.latency)
                if self.blackhole_up if up else self.blackhole_down:
                    continue
                if up:
                    pair.bytes_up += len(data)
                else:
                    pair.bytes_down += len(data)
                    if self.split_tail and len(data) > SPLIT_OVER:
                        writer.write(data[:-self.split_tail])
                        await writer.drain()
                        await asyncio.sleep(self.split_pause)
                        data = data[-self.split_tail:]
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        # The source ended. A blackholed direction swallows that too: the peer learns nothing.
        if not (self.blackhole_up if up else self.blackhole_down) and pair in self.pairs:
            writer.close()
