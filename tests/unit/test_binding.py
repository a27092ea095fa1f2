"""CloudEvents Kafka binding (binary mode): headers, key and payload agree, and bad records are explained."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from topics import AvroCodec, DecodeError, Event, decode_event, derived_id, encode_event, event_id_of

CODEC = AvroCodec()
TURN = "switchboard.dialogue.Turn"


def _turn(**overrides: object) -> Event:
    fields: dict[str, object] = {"type": TURN, "source": "/tests", "subject": "s1",
                                 "data": {"session_id": "s1", "agent": "echo", "text": "hi", "channel": "cli",
                                          "locale": None}}
    fields.update(overrides)
    return Event(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_attribute() -> None:
    event = _turn(time=datetime(2026, 11, 24, 12, 30, 1, 123456, tzinfo=UTC), principal="user:ann",
                  causationid="c-1", correlationid="corr-1")
    record = encode_event(event, CODEC)
    assert decode_event(record.value, record.headers, CODEC, TURN) == event


def test_headers_follow_the_kafka_binding() -> None:
    event = _turn(principal="user:ann", causationid="c-1")
    record = encode_event(event, CODEC)
    headers = dict(record.headers)
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_id"] == event.id.encode()
    assert headers["ce_type"] == TURN.encode()
    assert headers["ce_source"] == b"/tests"
    assert headers["ce_subject"] == b"s1"
    assert headers["content-type"] == b"application/avro"
    assert headers["ce_correlationid"] == event.id.encode()  # a chain starts at its first event
    assert headers["ce_causationid"] == b"c-1"
    assert headers["ce_principal"] == b"user:ann"
    assert headers["ce_time"].endswith(b"Z")
    assert record.key == b"s1"
    assert event_id_of(record.headers) == event.id


def test_optional_attributes_are_omitted_when_absent() -> None:
    record = encode_event(_turn(subject=None), CODEC)
    names = {name for name, _ in record.headers}
    assert not names & {"ce_subject", "ce_causationid", "ce_principal"}
    assert record.key is None


def test_caused_events_chain_deterministically() -> None:
    turn = _turn(principal="user:ann")
    reply = turn.caused("switchboard.dialogue.Reply", "/agent", {}, effect="reply")
    again = turn.caused("switchboard.dialogue.Reply", "/agent", {}, effect="reply")
    assert reply.id == again.id == derived_id(turn.id, "reply")
    assert reply.causationid == turn.id
    assert reply.correlationid == turn.correlationid
    assert reply.principal == "user:ann"
    assert reply.subject == turn.subject
    assert turn.caused("x", "/a", {}, effect="other").id != reply.id


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h: [x for x in h if x[0] != "ce_id"], "missing header"),
        (lambda h: [(k, b"0.3" if k == "ce_specversion" else v) for k, v in h], "specversion"),
        (lambda h: [(k, b"application/json" if k == "content-type" else v) for k, v in h], "content-type"),
        (lambda h: [(k, b"switchboard.dialogue.Reply" if k == "ce_type" else v) for k, v in h], "written as"),
        (lambda h: [(k, b"\xff\xfe" if k == "ce_source" else v) for k, v in h], "not UTF-8"),
        (lambda h: [(k, b"yesterday" if k == "ce_time" else v) for k, v in h], "RFC 3339"),
    ],
)
def test_bad_headers_are_explained(mutate: object, message: str) -> None:
    record = encode_event(_turn(), CODEC)
    headers = mutate(record.headers)  # type: ignore[operator]
    with pytest.raises(DecodeError, match=message):
        decode_event(record.value, headers, CODEC)


def test_a_tombstone_is_not_an_event() -> None:
    with pytest.raises(DecodeError, match="tombstone"):
        decode_event(None, [], CODEC)
