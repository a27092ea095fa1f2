"""CloudEvents Kafka protocol binding, binary content mode: attributes in `ce_` headers, Avro payload as the value.

Binary mode keeps the value a plain self-describing Avro object (cheap to decode, no envelope to unwrap) while
any CloudEvents-aware tool still reads the attributes from the headers. The Kafka key is the event's subject.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from topics.codec import AvroCodec
from topics.errors import DecodeError, EncodeError
from topics.event import CONTENT_TYPE, SPEC_VERSION, Event

ENVELOPE_SCHEMA = "switchboard.Envelope"
CONTENT_TYPE_HEADER = "content-type"
_PREFIX = "ce_"
# Attribute -> header. `datacontenttype` maps to `content-type`, as the binding specifies.
_OPTIONAL = ("subject", "causationid", "principal")
_REQUIRED = ("specversion", "id", "source", "type", "time", "correlationid")

Headers = Sequence[tuple[str, bytes | None]]


@dataclass(frozen=True)
class KafkaRecord:
    """What goes to (or came from) Kafka for one event."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def _format_time(when: datetime) -> str:
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DecodeError(f"header ce_time={text!r} is not an RFC 3339 timestamp") from None


def encode_event(event: Event, codec: AvroCodec) -> KafkaRecord:
    """Validate envelope and payload, then lay the event out as a Kafka record."""
    if event.specversion != SPEC_VERSION:
        raise EncodeError(f"event {event.id}: specversion must be {SPEC_VERSION}, not {event.specversion}")
    if event.datacontenttype != CONTENT_TYPE:
        raise EncodeError(f"event {event.id}: datacontenttype must be {CONTENT_TYPE}")
    if not event.source or not event.type:
        raise EncodeError(f"event {event.id}: source and type are required")
    codec.validate(ENVELOPE_SCHEMA, event.envelope())
    value = codec.encode(event.type, event.data)
    headers: list[tuple[str, bytes]] = [
        (_PREFIX + "specversion", event.specversion.encode()),
        (_PREFIX + "id", event.id.encode()),
        (_PREFIX + "source", event.source.encode()),
        (_PREFIX + "type", event.type.encode()),
        (_PREFIX + "time", _format_time(event.time).encode()),
        (_PREFIX + "correlationid", event.correlationid.encode()),
        (CONTENT_TYPE_HEADER, event.datacontenttype.encode()),
    ]
    for name in _OPTIONAL:
        attr = getattr(event, name)
        if attr is not None:
            headers.append((_PREFIX + name, str(attr).encode()))
    key = event.subject.encode() if event.subject is not None else None
    return KafkaRecord(key=key, value=value, headers=headers)


def _header_map(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, raw in headers:
        if raw is None:
            continue
        try:
            found[name] = raw.decode()
        except UnicodeDecodeError:
            raise DecodeError(f"header {name} is not UTF-8") from None
    return found


def decode_event(
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]],
    codec: AvroCodec,
    expected_type: str | None = None,
) -> Event:
    """Rebuild the event from a Kafka record, validating headers, payload and that they agree."""
    if value is None:
        raise DecodeError("record has no value (a tombstone): nothing to decode")
    attrs = _header_map(headers)
    missing = [_PREFIX + name for name in _REQUIRED if _PREFIX + name not in attrs]
    if missing:
        raise DecodeError(f"not a CloudEvent: missing header(s) {', '.join(missing)}")
    if attrs[_PREFIX + "specversion"] != SPEC_VERSION:
        raise DecodeError(f"unsupported CloudEvents specversion {attrs[_PREFIX + 'specversion']!r}")
    content_type = attrs.get(CONTENT_TYPE_HEADER, CONTENT_TYPE)
    if content_type != CONTENT_TYPE:
        raise DecodeError(f"content-type {content_type!r} is not {CONTENT_TYPE}")
    declared = attrs[_PREFIX + "type"]
    decoded = codec.decode(value, expected=expected_type)
    if decoded.schema != declared:
        raise DecodeError(f"header ce_type={declared} but the payload was written as {decoded.schema}")
    return Event(
        type=declared,
        source=attrs[_PREFIX + "source"],
        data=decoded.datum,
        subject=attrs.get(_PREFIX + "subject"),
        id=attrs[_PREFIX + "id"],
        time=_parse_time(attrs[_PREFIX + "time"]),
        correlationid=attrs[_PREFIX + "correlationid"],
        causationid=attrs.get(_PREFIX + "causationid"),
        principal=attrs.get(_PREFIX + "principal"),
    )


def event_id_of(headers: Iterable[tuple[str, bytes | None]]) -> str | None:
    """The event id from the headers alone, for deduplication without decoding the payload."""
    for name, raw in headers:
        if name == _PREFIX + "id" and raw is not None:
            return raw.decode(errors="replace")
    return None
