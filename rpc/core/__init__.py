"""The protocol core: frames, the wire protocol, calls, serialization and errors, with no I/O.

Nothing here opens a socket or starts a thread, so the blocking and the asyncio drivers share it
and it is tested without a broker.
"""
