"""The Avro wire format: validated on encode, resolved on decode, and self-describing."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema
import pytest
from fastavro.utils import generate_many
from hypothesis import given
from hypothesis import strategies as st

from schemas import SCHEMA_DIR
from topics import AvroCodec, DecodeError, EncodeError, SchemaError, SchemaStore, encode_event
from topics.codec import HEADER_SIZE, MAGIC
from topics.event import Event
from topics.schema_store import Schema, load_schema_file

CODEC = AvroCodec()
TURN = "switchboard.dialogue.Turn"
A_TURN = {"session_id": "s", "agent": "a", "text": "hello"}


# -- round trips and the header ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CODEC.store.names())
def test_every_schema_round_trips_generated_data(name: str) -> None:
    schema = CODEC.store.current(name)
    for datum in generate_many(schema.parsed, 20):
        value = CODEC.encode(name, datum)
        decoded = CODEC.decode(value, expected=name)
        assert decoded.schema == name
        assert decoded.writer_fingerprint == schema.fingerprint
        # Logical types decode to richer objects (a timestamp to a datetime): compare the bytes they encode to.
        assert CODEC.encode(name, decoded.datum) == value


def test_value_is_a_single_object_encoding() -> None:
    value = CODEC.encode(TURN, A_TURN)
    assert value[:2] == MAGIC == b"\xc3\x01"
    assert value[2:HEADER_SIZE] == CODEC.store.current(TURN).fingerprint
    assert len(CODEC.store.current(TURN).fingerprint) == 8
    body = io.BytesIO(value[HEADER_SIZE:])
    assert fastavro.schemaless_reader(body, CODEC.store.current(TURN).parsed, None) == {
        **A_TURN, "channel": "api", "locale": None, "via": None, "turn_id": None}


def test_defaults_are_filled_on_encode() -> None:
    assert CODEC.decode(CODEC.encode(TURN, A_TURN)).datum == {**A_TURN, "channel": "api", "locale": None, "via": None,
                                                              "turn_id": None}


# -- encode errors -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("datum", "message"),
    [
        ({**A_TURN, "text": 3}, r"switchboard\.dialogue\.Turn\.text is 3, expected string"),
        ({"session_id": "s", "agent": "a"}, r"switchboard\.dialogue\.Turn\.text is None, expected string"),
        ({**A_TURN, "locale": 5}, r"switchboard\.dialogue\.Turn\.locale is 5"),
        ({**A_TURN, "session_id": "x" * 100}, None),
    ],
)
def test_encode_names_the_offending_field(datum: dict[str, Any], message: str | None) -> None:
    if message is None:
        assert CODEC.decode(CODEC.encode(TURN, datum)).datum["session_id"] == "x" * 100
        return
    with pytest.raises(EncodeError, match=r"^switchboard\.dialogue\.Turn: payload does not match the schema: .*"
                       + message):
        CODEC.encode(TURN, datum)


def test_encode_names_a_nested_field() -> None:
    letter = {"reason": "r", "error": "E", "processor": "p", "topic": "t", "partition": 0, "offset": 1,
              "headers": [{"key": 1, "value": None}]}
    with pytest.raises(EncodeError, match=r"switchboard\.bus\.Header\.key is 1, expected string"):
        CODEC.encode("switchboard.bus.DeadLetter", letter)


def test_encode_of_an_unknown_schema_lists_the_known_ones() -> None:
    with pytest.raises(SchemaError, match=r"no schema named 'x\.Nope'.*switchboard\.dialogue\.Turn"):
        CODEC.encode("x.Nope", {})


# -- decode errors -----------------------------------------------------------------------------------------------
def _turn_value() -> bytes:
    return CODEC.encode(TURN, A_TURN)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an Avro single-object encoding"),
        (b"plain text", "not an Avro single-object encoding"),
        (b'{"session_id": "s"}', "not an Avro single-object encoding"),
        (b"\xc3\x01\x00\x01", "not an Avro single-object encoding"),  # header cut short
        (b"\xc3\x02" + _turn_value()[2:], "not an Avro single-object encoding"),  # wrong magic
        (b"\x00\x00\x00\x00\x01" + _turn_value()[HEADER_SIZE:], "not an Avro single-object encoding"),  # Confluent
        (b"\xc3\x01" + b"\x00" * 8 + b"x", "fingerprint 0000000000000000, which is in neither schemas/ nor"),
    ],
    ids=["empty", "text", "json", "short-header", "wrong-magic", "confluent-framing", "unknown-fingerprint"],
)
def test_decode_rejects_what_is_not_ours(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        CODEC.decode(data)


def test_decode_rejects_truncated_and_trailing_bytes() -> None:
    value = _turn_value()
    for cut in (1, 3, len(value) - HEADER_SIZE):
        with pytest.raises(DecodeError, match=r"switchboard\.dialogue\.Turn: corrupt Avro body"):
            CODEC.decode(value[:-cut])
    with pytest.raises(DecodeError, match="1 unexpected bytes after the Avro body"):
        CODEC.decode(value + b"\x00")


def test_decode_checks_the_expected_type() -> None:
    with pytest.raises(DecodeError, match=r"payload is a switchboard\.dialogue\.Turn, but this topic carries "
                                          r"switchboard\.dialogue\.Reply"):
        CODEC.decode(_turn_value(), expected="switchboard.dialogue.Reply")
    assert CODEC.decode(_turn_value(), expected=TURN).schema == TURN


# -- resolution: old writers, current readers --------------------------------------------------------------------
def _schema(directory: Path, fields: list[dict[str, Any]]) -> Schema:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "t.Thing.avsc"
    path.write_text(json.dumps({"type": "record", "name": "Thing", "namespace": "t", "fields": fields}))
    return load_schema_file(path)


def test_old_messages_resolve_to_the_current_schema(tmp_path: Path) -> None:
    old = _schema(tmp_path / "v1", [{"name": "a", "type": "string"}, {"name": "n", "type": "int"},
                                    {"name": "gone", "type": "string"}])
    new = _schema(tmp_path / "v2", [{"name": "a", "type": "string"}, {"name": "n", "type": "long"},
                                    {"name": "b", "type": "int", "default": 7},
                                    {"name": "c", "type": ["null", "string"], "default": None}])
    written_before = AvroCodec(SchemaStore([old])).encode("t.Thing", {"a": "x", "n": 2, "gone": "g"})
    reader = AvroCodec(SchemaStore(current=[new], history=[old]))
    decoded = reader.decode(written_before, expected="t.Thing")
    assert decoded.datum == {"a": "x", "n": 2, "b": 7, "c": None}
    assert decoded.writer_fingerprint == old.fingerprint != new.fingerprint
    # Without the old version in history, the reader cannot know how the message was written.
    with pytest.raises(DecodeError, match=f"fingerprint {old.fingerprint_hex}"):
        AvroCodec(SchemaStore([new])).decode(written_before)


def test_a_version_known_only_from_history_is_a_decode_error(tmp_path: Path) -> None:
    old = _schema(tmp_path, [{"name": "a", "type": "string"}])
    value = AvroCodec(SchemaStore([old])).encode("t.Thing", {"a": "x"})
    store = SchemaStore(current=[CODEC.store.current(TURN)], history=[old])
    with pytest.raises(DecodeError, match=r"payload is a t\.Thing .* no current schema of that name"):
        AvroCodec(store).decode(value)


# -- a third party needs nothing but the schemas folder ----------------------------------------------------------
def _rabin(data: bytes) -> bytes:
    """CRC-64-AVRO straight from the Avro specification, independent of topics/."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


def _third_party_schemas() -> dict[bytes, Any]:
    by_fingerprint: dict[bytes, Any] = {}
    for path in [*SCHEMA_DIR.glob("*.avsc"), *(SCHEMA_DIR / "history").glob("*.avsc")]:
        definition = json.loads(path.read_text(encoding="utf-8"))
        canonical = fastavro.schema.to_parsing_canonical_form(definition)
        by_fingerprint[_rabin(canonical.encode())] = fastavro.parse_schema(definition)
    return by_fingerprint


def _third_party_decode(value: bytes, schemas: dict[bytes, Any]) -> Any:
    assert value[:2] == b"\xc3\x01"
    writer = schemas[value[2:10]]
    body = io.BytesIO(value[10:])
    datum = fastavro.schemaless_reader(body, writer, None)
    assert body.read() == b""
    return datum


def test_the_rabin_fingerprint_matches_the_spec_test_vector() -> None:
    # The Avro specification: the fingerprint of the schema "null" is 0x63dd24e7cc258f8a.
    assert _rabin(b'"null"') == (0x63DD24E7CC258F8A).to_bytes(8, "little")


def test_a_third_party_decodes_with_nothing_but_the_schemas_folder() -> None:
    schemas = _third_party_schemas()
    value = encode_event(Event(type="switchboard.dialogue.Reply", source="/t", subject="s",
                               data={"session_id": "s", "agent": "a", "text": "你好", "in_reply_to": "x"}),
                         CODEC).value
    assert _third_party_decode(value, schemas)["text"] == "你好"
    for name in CODEC.store.names():
        for datum in generate_many(CODEC.store.current(name).parsed, 5):
            value = CODEC.encode(name, datum)
            assert _third_party_decode(value, schemas) == CODEC.decode(value).datum


# -- properties ----------------------------------------------------------------------------------------------------
@given(st.text(), st.text(), st.text(), st.text(), st.one_of(st.none(), st.text()))
def test_any_text_round_trips_exactly(session: str, agent: str, text: str, channel: str, locale: str | None) -> None:
    datum = {"session_id": session, "agent": agent, "text": text, "channel": channel, "locale": locale,
             "via": None, "turn_id": None}
    value = CODEC.encode(TURN, datum)
    assert CODEC.decode(value, expected=TURN).datum == datum


@given(st.one_of(st.none(), st.binary()), st.lists(st.tuples(st.text(), st.one_of(st.none(), st.binary()))))
def test_dead_letters_keep_any_bytes_exactly(value: bytes | None, headers: list[tuple[str, bytes | None]]) -> None:
    letter = {"reason": "r", "error": "E", "processor": "p", "topic": "t", "partition": 0, "offset": 1,
              "timestamp_ms": None, "key": None, "value": value,
              "headers": [{"key": k, "value": v} for k, v in headers]}
    assert CODEC.decode(CODEC.encode("switchboard.bus.DeadLetter", letter)).datum == letter


def test_unknown_fields_are_rejected_not_dropped() -> None:
    with pytest.raises(EncodeError, match=r"unknown field\(s\) chanel; the schema has session_id, agent, text"):
        CODEC.encode("switchboard.dialogue.Turn", {"session_id": "s", "agent": "a", "text": "t", "chanel": "cli"})
