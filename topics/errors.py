"""Switchboard's exceptions: one small hierarchy, each message telling the user what to do next.

They live in `topics/` because every other package depends on the bus's types, so this is the one place all of
them can import from without cycles.
"""

from __future__ import annotations


class SwitchboardError(Exception):
    """Base of every error Switchboard raises on purpose; the CLI prints these without a traceback."""


class ConfigError(SwitchboardError):
    """Settings are missing or invalid; the message names the key (and its environment variable)."""


class SchemaError(SwitchboardError):
    """A schema file is unreadable or invalid, or a schema a message needs is not in `schemas/`."""


class EventError(SwitchboardError):
    """An event could not be encoded or decoded."""


class EncodeError(EventError):
    """An outgoing event does not match its schema (or its envelope is incomplete); nothing was sent."""


class DecodeError(EventError):
    """Incoming bytes are not a valid Switchboard event; the shell sends them to the dead-letter topic."""


class TopicError(SwitchboardError):
    """A topic is unknown or its declaration is inconsistent with the cluster."""


class BusError(SwitchboardError):
    """The Kafka-protocol bus could not be reached or refused a request."""


class StackError(SwitchboardError):
    """A component of the embedded stack could not start, stop or be reached."""

    def __init__(self, component: str, message: str, *, port: int | None = None, log: str | None = None) -> None:
        self.component = component
        self.reason = message
        self.port = port
        self.log = log
        where = f" (port {port})" if port is not None else ""
        tail = f"\n  log: {log}" if log else ""
        super().__init__(f"{component}{where}: {message}{tail}")
