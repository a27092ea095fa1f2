"""The Avro wire format: validated on encode, resolved on decode, and self-describing."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.utils import generate_many
from hypothesis import given
from hypothesis import strategies as st

from schemas import SCHEMA_DIR
from topics import AvroCodec, DecodeError, EncodeError, SchemaStore, encode_event
from topics.codec import MAGIC
from topics.event import Event
from topics.schema_store import load_schema_file

CODEC = AvroCodec()


@pytest.mark.parametrize("name", CODEC.store.names())
def test_every_schema_round_trips_generated_data(name: str) -> None:
    schema = CODEC.store.current(name)
    for datum in generate_many(schema.parsed, 20):
        value = CODEC.encode(name, datum)
        decoded = CODEC.decode(value)
        assert decoded.schema == name
        # Logical types decode to richer objects (a timestamp to a datetime): compare the bytes they encode to.
        assert CODEC.encode(name, decoded.datum) == value


def test_value_is_a_single_object_encoding() -> None:
    value = CODEC.encode("switchboard.dialogue.Turn", {"session_id": "s", "agent": "a", "text": "t"})
    assert value[:2] == MAGIC == b"\xc3\x01"
    assert value[2:10] == CODEC.store.current("switchboard.dialogue.Turn").fingerprint


def test_encode_names_the_offending_field() -> None:
    with pytest.raises(EncodeError, match=r"switchboard.dialogue.Turn.text is 3, expected string"):
        CODEC.encode("switchboard.dialogue.Turn", {"session_id": "s", "agent": "a", "text": 3})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"plain text", "not an Avro single-object encoding"),
        (b"\xc3\x01" + b"\x00" * 8 + b"x", "neither schemas/ nor schemas/history/"),
    ],
)
def test_decode_rejects_what_is_not_ours(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        CODEC.decode(data)


def test_decode_rejects_truncated_and_trailing_bytes() -> None:
    value = CODEC.encode("switchboard.dialogue.Turn", {"session_id": "s", "agent": "a", "text": "hello"})
    with pytest.raises(DecodeError, match="corrupt Avro body"):
        CODEC.decode(value[:-3])
    with pytest.raises(DecodeError, match="unexpected bytes"):
        CODEC.decode(value + b"\x00")


def test_decode_checks_the_expected_type() -> None:
    value = CODEC.encode("switchboard.dialogue.Turn", {"session_id": "s", "agent": "a", "text": "t"})
    with pytest.raises(DecodeError, match=r"this topic carries switchboard\.dialogue\.Reply"):
        CODEC.decode(value, expected="switchboard.dialogue.Reply")


def test_old_messages_resolve_to_the_current_schema(tmp_path: Path) -> None:
    old_def = {"type": "record", "name": "Thing", "namespace": "t", "fields": [{"name": "a", "type": "string"}]}
    new_def = {**old_def, "fields": [*old_def["fields"], {"name": "b", "type": "int", "default": 7}]}
    (tmp_path / "old.avsc").write_text(json.dumps(old_def))
    (tmp_path / "new.avsc").write_text(json.dumps(new_def))
    old, new = load_schema_file(tmp_path / "old.avsc"), load_schema_file(tmp_path / "new.avsc")
    written_before = AvroCodec(SchemaStore([old])).encode("t.Thing", {"a": "x"})
    reader = AvroCodec(SchemaStore([new], history=[old]))
    assert reader.decode(written_before).datum == {"a": "x", "b": 7}


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


def test_a_third_party_decodes_with_nothing_but_the_schemas_folder() -> None:
    value = encode_event(Event(type="switchboard.dialogue.Reply", source="/t", subject="s",
                               data={"session_id": "s", "agent": "a", "text": "你好", "in_reply_to": "x"}),
                         CODEC).value
    by_fingerprint: dict[bytes, Any] = {}
    for path in [*SCHEMA_DIR.glob("*.avsc"), *(SCHEMA_DIR / "history").glob("*.avsc")]:
        definition = json.loads(path.read_text())
        canonical = fastavro.schema.to_parsing_canonical_form(definition)
        by_fingerprint[_rabin(canonical.encode())] = fastavro.parse_schema(definition)
    assert value[:2] == b"\xc3\x01"
    writer = by_fingerprint[value[2:10]]
    assert fastavro.schemaless_reader(io.BytesIO(value[10:]), writer, None)["text"] == "你好"


@given(st.text(), st.text(), st.text(), st.one_of(st.none(), st.text()))
def test_any_text_round_trips_exactly(session: str, agent: str, text: str, locale: str | None) -> None:
    datum = {"session_id": session, "agent": agent, "text": text, "channel": "api", "locale": locale}
    assert CODEC.decode(CODEC.encode("switchboard.dialogue.Turn", datum)).datum == datum
