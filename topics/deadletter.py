"""Building dead-letter events: the record that failed, whole, with the reason."""

from __future__ import annotations

from collections.abc import Sequence

from topics.catalog import DEAD_LETTERS
from topics.event import Event, derived_id

DEAD_LETTER_TYPE = DEAD_LETTERS.value_schema


def dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
    timestamp_ms: int | None,
    reason: str,
    error: str,
    processor: str,
    principal: str | None = None,
) -> Event:
    """A `DeadLetter` event for the record at topic/partition/offset.

    Its id is derived from that position, so redelivery of the same bad record yields the same dead letter.
    """
    position = f"{topic}/{partition}/{offset}"
    return Event(
        type=DEAD_LETTER_TYPE,
        source=f"/switchboard/streams/{processor}",
        subject=topic,
        id=derived_id(position, f"deadletter:{processor}"),
        principal=principal,
        data={
            "reason": reason,
            "error": error,
            "processor": processor,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp_ms": timestamp_ms,
            "key": key,
            "value": value,
            "headers": [{"key": k, "value": v} for k, v in headers],
        },
    )
