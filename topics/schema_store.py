"""The schemas the bus speaks, loaded from `schemas/` and indexed by name and by Avro fingerprint.

Messages name their writer's schema by its 64-bit Rabin fingerprint (Avro single-object encoding), so a decoder
needs every version ever written: the current files plus `schemas/history/`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from topics.errors import SchemaError

_EMPTY64 = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _table()


def rabin_fingerprint(canonical: str) -> bytes:
    """CRC-64-AVRO of a schema's parsing canonical form, as the 8 little-endian bytes the Avro spec puts on the wire."""
    fp = _EMPTY64
    for byte in canonical.encode():
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


@dataclass(frozen=True)
class Schema:
    """One version of one Avro schema."""

    name: str
    fingerprint: bytes
    definition: Mapping[str, Any]
    parsed: Any
    path: Path

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    @property
    def canonical(self) -> str:
        return str(to_parsing_canonical_form(dict(self.definition)))


def load_schema_file(path: Path) -> Schema:
    """Parse one `.avsc` file; errors name the file and what is wrong with it."""
    try:
        definition = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path}: cannot read schema ({exc}); fix the JSON") from exc
    if not isinstance(definition, dict) or definition.get("type") != "record":
        raise SchemaError(f"{path}: a Switchboard schema must be a single Avro record")
    try:
        parsed: Any = fastavro.parse_schema(definition, _write_hint=False)
    except Exception as exc:
        raise SchemaError(f"{path}: invalid Avro schema: {exc}") from exc
    name = str(parsed["name"])
    fingerprint = rabin_fingerprint(str(to_parsing_canonical_form(definition)))
    return Schema(name=name, fingerprint=fingerprint, definition=definition, parsed=parsed, path=path)


class SchemaStore:
    """Current schema per name, and every known version per fingerprint."""

    def __init__(self, current: Iterable[Schema], history: Iterable[Schema] = ()) -> None:
        self._current: dict[str, Schema] = {}
        self._by_fp: dict[bytes, Schema] = {}
        for schema in current:
            if schema.name in self._current:
                other = self._current[schema.name].path
                raise SchemaError(f"{schema.path}: schema {schema.name} is also defined in {other}")
            self._current[schema.name] = schema
            self._by_fp[schema.fingerprint] = schema
        for schema in history:
            self._by_fp.setdefault(schema.fingerprint, schema)

    @classmethod
    def from_directory(cls, directory: Path | None = None) -> SchemaStore:
        """Load `directory/*.avsc` as current and `directory/history/*.avsc` as older versions."""
        if directory is None:
            from schemas import SCHEMA_DIR

            directory = SCHEMA_DIR
        if not directory.is_dir():
            raise SchemaError(f"schema directory {directory} does not exist")
        current = []
        for path in sorted(directory.glob("*.avsc")):
            schema = load_schema_file(path)
            if path.stem != schema.name:
                raise SchemaError(f"{path}: file must be named after its schema: {schema.name}.avsc")
            current.append(schema)
        history = [load_schema_file(p) for p in sorted((directory / "history").glob("*.avsc"))]
        return cls(current, history)

    def current(self, name: str) -> Schema:
        try:
            return self._current[name]
        except KeyError:
            known = ", ".join(sorted(self._current))
            raise SchemaError(f"no schema named {name!r} in schemas/ (known: {known})") from None

    def by_fingerprint(self, fingerprint: bytes) -> Schema | None:
        return self._by_fp.get(fingerprint)

    def names(self) -> list[str]:
        return sorted(self._current)

    def versions(self) -> list[Schema]:
        """Every known version, current and historical."""
        return list(self._by_fp.values())


@functools.cache
def default_store() -> SchemaStore:
    """The store of the `schemas/` package, loaded once per process."""
    return SchemaStore.from_directory()
