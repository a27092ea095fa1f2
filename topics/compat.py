"""Schema evolution rules as code: every version ever written stays readable by the current schema (BACKWARD).

Checked for real with fastavro's schema resolution (old writer, new reader) on generated data, so the rule is
Avro's own, not a re-implementation of it. `freeze` records each current version under `schemas/history/` by
fingerprint, which is also what lets decoders find the writer schema of old messages.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.utils import generate_many

from topics.schema_store import Schema, SchemaStore, load_schema_file

_SAMPLES = 25


def _nulls(schema: Any) -> Any:
    """A datum with every optional (null-first union) field null: the corner generated data may miss."""
    if isinstance(schema, dict) and schema.get("type") == "record":
        return {f["name"]: _null_field(f["type"]) for f in schema["fields"]}
    return None


def _null_field(field_type: Any) -> Any:
    if isinstance(field_type, list):
        return None if "null" in field_type else _null_field(field_type[0])
    if isinstance(field_type, dict):
        kind = field_type.get("type")
        if kind == "record":
            return _nulls(field_type)
        if kind == "array":
            return []
        if kind == "map":
            return {}
        if kind == "enum":
            return field_type["symbols"][0]
        if kind == "fixed":
            return b"\0" * int(field_type["size"])
        return _null_field(kind)
    return {"null": None, "boolean": False, "int": 0, "long": 0, "float": 0.0, "double": 0.0,
            "bytes": b"", "string": ""}.get(field_type)


def check_backward(old: Schema, new: Schema) -> list[str]:
    """Problems reading data written with `old` using `new` as the reader schema; empty when compatible."""
    if old.name != new.name:
        return [f"{new.name}: cannot read {old.name} (a schema's full name must not change)"]
    problems: list[str] = []
    samples = [*generate_many(old.parsed, _SAMPLES)]
    nulls = _nulls(old.parsed)
    if nulls is not None:
        samples.append(nulls)
    for datum in samples:
        buffer = io.BytesIO()
        schemaless_writer(buffer, old.parsed, datum)
        buffer.seek(0)
        try:
            schemaless_reader(buffer, old.parsed, new.parsed)
        except Exception as exc:
            problems.append(f"{new.name} {new.fingerprint_hex} cannot read data written with "
                            f"{old.fingerprint_hex} ({old.path.name}): {exc}")
            break
    return problems


def history_file(schema: Schema, history_dir: Path) -> Path:
    return history_dir / f"{schema.name}.{schema.fingerprint_hex}.avsc"


def freeze(schema_dir: Path) -> list[Path]:
    """Copy each current schema into `schema_dir/history/` unless that exact version is there; the new paths."""
    store = SchemaStore.from_directory(schema_dir)
    history_dir = schema_dir / "history"
    history_dir.mkdir(exist_ok=True)
    known = {load_schema_file(path).fingerprint for path in history_dir.glob("*.avsc")}
    written = []
    for name in store.names():
        schema = store.current(name)
        if schema.fingerprint in known:
            continue
        path = history_file(schema, history_dir)
        path.write_text(json.dumps(schema.definition, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written
