"""Limits shared by servers and proxies."""

#: Largest message body a server or proxy accepts unless told otherwise (RabbitMQ 4 uses 16 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
