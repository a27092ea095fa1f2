"""Avro wire format of Switchboard payloads: validated on encode, resolved to the reader's schema on decode.

Each value is an Avro *single-object encoding*: `C3 01`, the writer schema's 8-byte CRC-64-AVRO fingerprint
(little-endian), then the Avro binary body. It is self-describing: anyone holding `schemas/` can decode it, with no
registry service (docs/events.md shows how, in a few lines of any Avro library).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import ValidationError, validate

from topics.errors import DecodeError, EncodeError, SchemaError
from topics.schema_store import Schema, SchemaStore, default_store

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8


@dataclass(frozen=True)
class Decoded:
    """A decoded payload and the schemas involved."""

    schema: str
    datum: dict[str, Any]
    writer_fingerprint: bytes


def _describe(error: Any) -> str:
    shown = repr(error.datum)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    expected = error.schema if isinstance(error.schema, str) else error.schema.get("type", error.schema)
    return f"{error.field} is {shown}, expected {expected}"


class AvroCodec:
    """Encodes and decodes payloads with the schemas of a `SchemaStore`."""

    def __init__(self, store: SchemaStore | None = None) -> None:
        self.store = store if store is not None else default_store()

    def validate(self, schema_name: str, datum: Mapping[str, Any]) -> Schema:
        """Check `datum` against the current schema; the error names each offending field."""
        schema = self.store.current(schema_name)
        # fastavro ignores keys the schema lacks; a misspelt field would silently become its default.
        known = [field["name"] for field in schema.definition["fields"]]
        unknown = sorted(set(datum) - set(known))
        if unknown:
            raise EncodeError(f"{schema_name}: unknown field(s) {', '.join(unknown)}; the schema has "
                              f"{', '.join(known)}")
        try:
            validate(datum, schema.parsed, raise_errors=True)
        except ValidationError as exc:
            problems = "; ".join(_describe(e) for e in getattr(exc, "errors", ())) or str(exc)
            raise EncodeError(f"{schema_name}: payload does not match the schema: {problems}") from None
        return schema

    def encode(self, schema_name: str, datum: Mapping[str, Any]) -> bytes:
        schema = self.validate(schema_name, datum)
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(schema.fingerprint)
        schemaless_writer(out, schema.parsed, dict(datum))
        return out.getvalue()

    def decode(self, data: bytes, expected: str | None = None) -> Decoded:
        """Decode with the writer's schema, resolved to the current (reader) schema of the same name.

        `expected` is the schema the topic declares; a payload of another type is an error, not a surprise.
        """
        if len(data) < HEADER_SIZE or not data.startswith(MAGIC):
            raise DecodeError(
                "value is not an Avro single-object encoding (expected the bytes C3 01 and a schema fingerprint); "
                "publish with `switchboard produce` or the topics codec"
            )
        fingerprint = data[len(MAGIC) : HEADER_SIZE]
        writer = self.store.by_fingerprint(fingerprint)
        if writer is None:
            raise DecodeError(
                f"written with schema fingerprint {fingerprint.hex()}, which is in neither schemas/ nor "
                "schemas/history/: the producer uses a schema this reader does not know; update schemas/"
            )
        if expected is not None and writer.name != expected:
            raise DecodeError(f"payload is a {writer.name}, but this topic carries {expected}")
        try:
            reader = self.store.current(writer.name)
        except SchemaError:
            raise DecodeError(
                f"payload is a {writer.name} (fingerprint {fingerprint.hex()}, known from schemas/history/), but "
                "schemas/ has no current schema of that name to read it with"
            ) from None
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            datum = schemaless_reader(body, writer.parsed, reader.parsed)
        except Exception as exc:
            raise DecodeError(f"{writer.name}: corrupt Avro body ({type(exc).__name__}: {exc})") from None
        if body.tell() != len(data):
            raise DecodeError(f"{writer.name}: {len(data) - body.tell()} unexpected bytes after the Avro body")
        if not isinstance(datum, dict):
            raise DecodeError(f"{writer.name}: body is not a record")
        return Decoded(schema=writer.name, datum=datum, writer_fingerprint=fingerprint)
