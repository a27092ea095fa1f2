"""The event: CloudEvents context attributes plus correlation, causation and principal, around a typed payload."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/avro"
_ID_NAMESPACE = uuid.UUID("6f1c1d1e-5b7a-4d53-9a0e-5357cb0a4d01")


def new_id() -> str:
    return str(uuid.uuid4())


def derived_id(cause_id: str, name: str) -> str:
    """A deterministic id for the effect `name` of event `cause_id`.

    Redelivery of the cause yields the same effect ids, which is what lets readers drop duplicates
    (at-least-once delivery + idempotent effects = effectively once).
    """
    return str(uuid.uuid5(_ID_NAMESPACE, f"{cause_id}/{name}"))


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Event:
    """One event on the bus.

    `type` is the Avro full name of `data` (e.g. `switchboard.dialogue.Turn`); `subject` is what the event is
    about and becomes the Kafka key, so all events of one subject stay in order. `correlationid` defaults to the
    event's own id: an event with no cause starts a chain.
    """

    type: str
    source: str
    data: Mapping[str, Any]
    subject: str | None = None
    id: str = field(default_factory=new_id)
    time: datetime = field(default_factory=utcnow)
    correlationid: str = ""
    causationid: str | None = None
    principal: str | None = None
    specversion: str = SPEC_VERSION
    datacontenttype: str = CONTENT_TYPE

    def __post_init__(self) -> None:
        if not self.correlationid:
            object.__setattr__(self, "correlationid", self.id)
        if self.time.tzinfo is None:
            object.__setattr__(self, "time", self.time.replace(tzinfo=UTC))

    def caused(
        self,
        type: str,
        source: str,
        data: Mapping[str, Any],
        *,
        effect: str,
        subject: str | None = None,
        time: datetime | None = None,
    ) -> Event:
        """An event caused by this one: same correlation and principal, a deterministic id named by `effect`."""
        return Event(
            type=type,
            source=source,
            data=data,
            subject=self.subject if subject is None else subject,
            id=derived_id(self.id, effect),
            time=time if time is not None else utcnow(),
            correlationid=self.correlationid,
            causationid=self.id,
            principal=self.principal,
        )

    def with_data(self, data: Mapping[str, Any]) -> Event:
        return replace(self, data=data)

    def envelope(self) -> dict[str, Any]:
        """The context attributes as a `switchboard.Envelope` record."""
        return {
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "specversion": self.specversion,
            "time": self.time,
            "subject": self.subject,
            "datacontenttype": self.datacontenttype,
            "correlationid": self.correlationid,
            "causationid": self.causationid,
            "principal": self.principal,
        }
