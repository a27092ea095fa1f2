"""CloudEvents Kafka binding (binary mode): headers, key and payload agree, and bad records are explained."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from topics import (
    AvroCodec,
    DecodeError,
    EncodeError,
    Event,
    KafkaRecord,
    SchemaError,
    decode_event,
    derived_id,
    encode_event,
    event_id_of,
)

CODEC = AvroCodec()
TURN = "switchboard.dialogue.Turn"
REPLY = "switchboard.dialogue.Reply"
WHEN = datetime(2026, 11, 24, 12, 30, 1, 123456, tzinfo=UTC)
Headers = list[tuple[str, bytes | None]]


def _turn(**overrides: object) -> Event:
    fields: dict[str, object] = {"type": TURN, "source": "/tests", "subject": "s1",
                                 "data": {"session_id": "s1", "agent": "echo", "text": "hi", "channel": "cli",
                                          "locale": None, "via": None, "turn_id": None}}
    fields.update(overrides)
    return Event(**fields)  # type: ignore[arg-type]


def _round_trip(event: Event) -> Event:
    record = encode_event(event, CODEC)
    return decode_event(record.value, record.headers, CODEC, event.type)


# -- round trips ---------------------------------------------------------------------------------------------------
def test_round_trip_keeps_every_attribute() -> None:
    event = _turn(time=WHEN, principal="user:ann", causationid="c-1", correlationid="corr-1")
    decoded = _round_trip(event)
    assert decoded == event
    assert decoded.time == WHEN and decoded.time.microsecond == 123456 and decoded.time.utcoffset() == timedelta(0)


def test_round_trip_without_the_optional_attributes() -> None:
    event = _turn(subject=None)
    decoded = _round_trip(event)
    assert decoded == event
    assert decoded.subject is None and decoded.causationid is None and decoded.principal is None
    assert decoded.correlationid == event.id


def test_time_travels_as_rfc3339_utc_with_microseconds() -> None:
    headers = dict(encode_event(_turn(time=WHEN), CODEC).headers)
    assert headers["ce_time"] == b"2026-11-24T12:30:01.123456Z"
    whole_second = dict(encode_event(_turn(time=WHEN.replace(microsecond=0)), CODEC).headers)
    assert whole_second["ce_time"] == b"2026-11-24T12:30:01.000000Z"


def test_naive_times_are_utc_and_offsets_are_kept() -> None:
    naive = _turn(time=datetime(2026, 1, 2, 3, 4, 5, 6))
    assert naive.time.tzinfo is UTC
    assert _round_trip(naive).time == datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    paris = _turn(time=datetime(2026, 1, 2, 4, 4, 5, 6, tzinfo=timezone(timedelta(hours=1))))
    assert _round_trip(paris).time == datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


def test_the_payload_round_trips_with_defaults_filled() -> None:
    event = _turn(data={"session_id": "s1", "agent": "echo", "text": "ünïcödé ✓"})
    assert dict(_round_trip(event).data) == {"session_id": "s1", "agent": "echo", "text": "ünïcödé ✓",
                                             "channel": "api", "locale": None, "via": None, "turn_id": None}


# -- the binding's layout ----------------------------------------------------------------------------------------
def test_headers_follow_the_kafka_binding() -> None:
    event = _turn(principal="user:ann", causationid="c-1", time=WHEN)
    record = encode_event(event, CODEC)
    assert isinstance(record, KafkaRecord)
    headers = dict(record.headers)
    assert len(headers) == len(record.headers), "each header appears once"
    assert headers == {
        "ce_specversion": b"1.0",
        "ce_id": event.id.encode(),
        "ce_source": b"/tests",
        "ce_type": TURN.encode(),
        "ce_time": b"2026-11-24T12:30:01.123456Z",
        "ce_correlationid": event.id.encode(),  # a chain starts at its first event
        "content-type": b"application/avro",  # datacontenttype maps to content-type, not ce_datacontenttype
        "ce_subject": b"s1",
        "ce_causationid": b"c-1",
        "ce_principal": b"user:ann",
    }
    assert record.key == b"s1", "the key is the subject"
    assert record.value == CODEC.encode(TURN, event.data)
    assert event_id_of(record.headers) == event.id


def test_optional_attributes_are_omitted_when_absent() -> None:
    record = encode_event(_turn(subject=None), CODEC)
    names = {name for name, _ in record.headers}
    assert not names & {"ce_subject", "ce_causationid", "ce_principal"}
    assert record.key is None


def test_event_id_of_reads_only_the_headers() -> None:
    assert event_id_of([("ce_type", b"x"), ("ce_id", b"abc")]) == "abc"
    assert event_id_of([("ce_type", b"x")]) is None
    assert event_id_of([("ce_id", None)]) is None
    assert event_id_of([]) is None


# -- the causal chain ----------------------------------------------------------------------------------------------
def test_caused_events_chain_deterministically() -> None:
    turn = _turn(principal="user:ann", correlationid="conversation-1")
    reply = turn.caused(REPLY, "/agent", {}, effect="reply")
    again = turn.caused(REPLY, "/agent", {}, effect="reply")
    assert reply.id == again.id == derived_id(turn.id, "reply")
    assert reply.causationid == turn.id
    assert reply.correlationid == turn.correlationid == "conversation-1"
    assert reply.principal == "user:ann"
    assert reply.subject == turn.subject
    assert turn.caused("x", "/a", {}, effect="other").id != reply.id
    assert turn.caused(REPLY, "/a", {}, effect="reply", subject="s2").subject == "s2"
    assert turn.caused(REPLY, "/a", {}, effect="reply", time=WHEN).time == WHEN
    grandchild = reply.caused(TURN, "/agent", {}, effect="follow-up")
    assert grandchild.correlationid == "conversation-1" and grandchild.causationid == reply.id


def test_a_redelivered_cause_yields_the_same_effect_ids() -> None:
    turn = _turn()
    redelivered = _round_trip(turn)
    assert redelivered.caused(REPLY, "/a", {}, effect="reply").id == turn.caused(REPLY, "/a", {}, effect="reply").id


def test_new_events_get_fresh_ids() -> None:
    assert _turn().id != _turn().id


# -- bad records -------------------------------------------------------------------------------------------------
def _replace(name: str, value: bytes | None) -> Callable[[Headers], Headers]:
    return lambda headers: [(k, value if k == name else v) for k, v in headers]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h: [x for x in h if x[0] != "ce_id"], "not a CloudEvent: missing header(s) ce_id"),
        (lambda h: [x for x in h if x[0] not in ("ce_source", "ce_time")], "missing header(s) ce_source, ce_time"),
        (lambda h: [], "missing header(s) ce_specversion, ce_id"),
        (_replace("ce_type", None), "missing header(s) ce_type"),
        (_replace("ce_specversion", b"0.3"), "unsupported CloudEvents specversion '0.3'"),
        (_replace("content-type", b"application/json"), "content-type 'application/json' is not application/avro"),
        (_replace("ce_type", REPLY.encode()), f"ce_type={REPLY} but the payload was written as {TURN}"),
        (_replace("ce_source", b"\xff\xfe"), "header ce_source is not UTF-8"),
        (_replace("ce_time", b"yesterday"), "ce_time='yesterday' is not an RFC 3339 timestamp"),
    ],
    ids=["no-id", "no-source-time", "no-headers", "null-type", "specversion", "content-type", "type-mismatch",
         "not-utf8", "bad-time"],
)
def test_bad_headers_are_explained(mutate: Callable[[Headers], Headers], message: str) -> None:
    record = encode_event(_turn(), CODEC)
    with pytest.raises(DecodeError) as error:
        decode_event(record.value, mutate(list(record.headers)), CODEC)
    assert message in str(error.value)


def test_a_missing_content_type_means_avro() -> None:
    event = _turn()
    record = encode_event(event, CODEC)
    headers = [(k, v) for k, v in record.headers if k != "content-type"]
    assert decode_event(record.value, headers, CODEC) == event


def test_the_topic_type_is_enforced() -> None:
    record = encode_event(_turn(), CODEC)
    with pytest.raises(DecodeError, match=f"payload is a {TURN}, but this topic carries {REPLY}"):
        decode_event(record.value, record.headers, CODEC, REPLY)


def test_a_bad_payload_is_a_decode_error() -> None:
    record = encode_event(_turn(), CODEC)
    with pytest.raises(DecodeError, match="not an Avro single-object encoding"):
        decode_event(b'{"text": "hi"}', record.headers, CODEC)


def test_a_tombstone_is_not_an_event() -> None:
    with pytest.raises(DecodeError, match="tombstone"):
        decode_event(None, [], CODEC)
    record = encode_event(_turn(), CODEC)
    with pytest.raises(DecodeError, match="tombstone"):
        decode_event(None, record.headers, CODEC)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"specversion": "0.3"}, "specversion must be 1.0"),
        ({"datacontenttype": "application/json"}, "datacontenttype must be application/avro"),
        ({"source": ""}, "source and type are required"),
        ({"data": {"session_id": "s1", "agent": "echo"}}, r"switchboard\.dialogue\.Turn\.text is None"),
    ],
    ids=["specversion", "content-type", "no-source", "bad-payload"],
)
def test_bad_events_are_refused_before_sending(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        encode_event(_turn(**overrides), CODEC)


def test_an_event_type_without_a_schema_is_refused() -> None:
    with pytest.raises(SchemaError, match=r"no schema named 'x\.Unknown' in schemas/ \(known: .*Turn"):
        encode_event(_turn(type="x.Unknown"), CODEC)
