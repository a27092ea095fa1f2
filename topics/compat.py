"""Schema evolution rules as code: every version ever written stays readable by the current schema (BACKWARD).

BACKWARD means: the *new* schema, as reader, resolves data written with any *old* schema. Following Avro's schema
resolution, that allows removing a field (the reader skips it), adding a field *with a default* (the reader fills
it), widening a type (int -> long/float/double, long -> float/double, float -> double, string <-> bytes) and making
a field optional (a reader union with a branch matching the writer's type). It forbids adding a field without a
default, changing a type incompatibly, renaming a record, and dropping enum symbols old data may hold (unless the
reader enum has a default).

`check_backward` states these rules structurally, naming the field at fault, and then checks for real with
fastavro's resolution (old writer, new reader) on generated data, so a rule this module misses is still caught by
Avro's own implementation. `freeze` records each current version under `schemas/history/` by fingerprint, which is
also what lets decoders find the writer schema of old messages.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.utils import generate_many

from topics.errors import SchemaError
from topics.schema_store import Schema, SchemaStore, load_schema_file

_SAMPLES = 20
_NAMED = ("record", "error", "enum", "fixed")
_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
# Writer type -> reader types it resolves to (Avro specification, "Schema Resolution").
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


# -- walking parsed schemas ----------------------------------------------------------------------------------------
def _named_types(schema: Any, found: dict[str, Any] | None = None) -> dict[str, Any]:
    """Full name -> definition of every named type in a parsed schema (which refers back to them by name)."""
    found = {} if found is None else found
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, found)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in _NAMED and isinstance(schema.get("name"), str):
            if schema["name"] in found:
                return found
            found[schema["name"]] = schema
        if kind in ("record", "error"):
            for field in schema.get("fields", ()):
                _named_types(field["type"], found)
        elif kind == "array":
            _named_types(schema["items"], found)
        elif kind == "map":
            _named_types(schema["values"], found)
        elif isinstance(kind, dict | list):
            _named_types(kind, found)
    return found


def _deref(schema: Any, names: dict[str, Any]) -> Any:
    """A reference to a named type replaced by its definition; `{"type": X}` wrappers unwrapped."""
    while True:
        if isinstance(schema, str) and schema in names:
            schema = names[schema]
        elif isinstance(schema, dict) and isinstance(schema.get("type"), dict | list):
            schema = schema["type"]
        else:
            return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return str(schema.get("type"))
    return str(schema)


def _short(name: str) -> str:
    return name.rpartition(".")[2]


def _describe(schema: Any) -> str:
    if isinstance(schema, list):
        return "[" + ", ".join(_describe(branch) for branch in schema) + "]"
    if isinstance(schema, dict):
        kind = _kind(schema)
        if kind in _NAMED:
            return f"{kind} {schema.get('name')}"
        if kind == "array":
            return f"array<{_describe(schema['items'])}>"
        if kind == "map":
            return f"map<{_describe(schema['values'])}>"
        return kind
    return str(schema)


class _Resolution:
    """Avro's resolution rules, writer (old) against reader (new), collecting every problem with its field path."""

    def __init__(self, writer: Any, reader: Any) -> None:
        self.writer_names = _named_types(writer)
        self.reader_names = _named_types(reader)
        self.problems: list[str] = []
        self._visited: set[tuple[str, str]] = set()

    def _names_match(self, w: dict[str, Any], r: dict[str, Any]) -> bool:
        aliases = {_short(str(alias)) for alias in r.get("aliases", ())}
        return _short(str(w.get("name"))) == _short(str(r.get("name"))) or _short(str(w.get("name"))) in aliases

    def matches(self, w: Any, r: Any) -> bool:
        """Avro's shallow match: which reader union branch a writer type is resolved against."""
        w, r = _deref(w, self.writer_names), _deref(r, self.reader_names)
        wk, rk = _kind(w), _kind(r)
        if wk in _PRIMITIVES:
            return wk == rk or rk in _PROMOTIONS.get(wk, ())
        if wk != rk:
            return False
        if wk in _NAMED:
            return self._names_match(w, r)
        return wk in ("array", "map")

    def check(self, w: Any, r: Any, path: str) -> None:
        w = _deref(w, self.writer_names)
        if _kind(w) == "union":
            # Old data may hold any branch of the writer's union: each must resolve.
            for branch in w:
                self._check_one(branch, r, path, union_branch=True)
            return
        self._check_one(w, r, path, union_branch=False)

    def _check_one(self, w: Any, r: Any, path: str, *, union_branch: bool) -> None:
        w, r = _deref(w, self.writer_names), _deref(r, self.reader_names)
        wk, rk = _kind(w), _kind(r)
        if rk == "union":
            chosen = next((branch for branch in r if self.matches(w, branch)), None)
            if chosen is None:
                self.problems.append(
                    f"{path}: old data holds {_describe(w)}, which no branch of the new union {_describe(r)} reads"
                )
                return
            self._check_one(w, chosen, path, union_branch=union_branch)
            return
        if not self.matches(w, r):
            if union_branch:
                self.problems.append(f"{path}: old data may hold {_describe(w)} (a branch of the old union), "
                                     f"which the new type {_describe(r)} cannot read")
            else:
                self.problems.append(f"{path}: type changed from {_describe(w)} to {_describe(r)}, "
                                     "which cannot read old data")
            return
        if wk in ("record", "error"):
            self._record(w, r, path)
        elif wk == "enum":
            missing = [symbol for symbol in w.get("symbols", ()) if symbol not in r.get("symbols", ())]
            if missing and "default" not in r:
                self.problems.append(
                    f"{path}: enum {r.get('name')} dropped symbol(s) {', '.join(missing)} that old data may hold "
                    "(keep them, or give the enum a default)"
                )
        elif wk == "fixed" and w.get("size") != r.get("size"):
            self.problems.append(f"{path}: fixed {r.get('name')} changed size from {w.get('size')} to {r.get('size')}")
        elif wk == "array":
            self.check(w["items"], r["items"], f"{path}[]")
        elif wk == "map":
            self.check(w["values"], r["values"], f"{path}{{}}")

    def _record(self, w: dict[str, Any], r: dict[str, Any], path: str) -> None:
        key = (str(w.get("name")), str(r.get("name")))
        if key in self._visited:  # a recursive type: already being checked further up
            return
        self._visited.add(key)
        written = {field["name"]: field for field in w.get("fields", ())}
        for field in r.get("fields", ()):
            names = [field["name"], *field.get("aliases", ())]
            source = next((written[name] for name in names if name in written), None)
            if source is not None:
                self.check(source["type"], field["type"], f"{path}.{field['name']}")
            elif "default" not in field:
                self.problems.append(
                    f"{path}.{field['name']}: added without a default, so data written before has no value for it "
                    "(give it a default)"
                )
        # Fields only the writer has are skipped by the reader: removing a field is backward compatible.


# -- sample data ---------------------------------------------------------------------------------------------------
def _minimal(schema: Any, names: dict[str, Any]) -> Any:
    """The smallest datum of `schema`: every union null where it can be, empty collections, zero values."""
    schema = _deref(schema, names)
    kind = _kind(schema)
    if kind == "union":
        if "null" in schema:
            return None
        return _minimal(schema[0], names)
    if kind in ("record", "error"):
        return {field["name"]: _minimal(field["type"], names) for field in schema.get("fields", ())}
    if kind == "array":
        return []
    if kind == "map":
        return {}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "fixed":
        return b"\0" * int(schema["size"])
    return {"null": None, "boolean": False, "int": 0, "long": 0, "float": 0.0, "double": 0.0,
            "bytes": b"", "string": ""}.get(kind)


def _samples(schema: Schema) -> Iterator[Any]:
    yield from generate_many(schema.parsed, _SAMPLES)
    yield _minimal(schema.parsed, _named_types(schema.parsed))


def _shown(datum: Any) -> str:
    text = repr(datum)
    return text if len(text) <= 200 else text[:197] + "..."


# -- the check -----------------------------------------------------------------------------------------------------
def check_backward(old: Schema, new: Schema) -> list[str]:
    """Problems reading data written with `old` using `new` as the reader schema; empty when compatible.

    Each problem names the field (as a path from the record, e.g. `switchboard.dialogue.Turn.text`) and what is
    wrong with it.
    """
    where = f"{new.name} {new.fingerprint_hex} reading data written with {old.fingerprint_hex} ({old.path.name})"
    if old.name != new.name:
        return [f"{where}: the full name changed from {old.name} to {new.name} (a schema's name must not change)"]
    rules = _Resolution(old.parsed, new.parsed)
    rules.check(old.parsed, new.parsed, new.name)
    problems = [f"{where}: {problem}" for problem in rules.problems]
    if problems:
        return problems
    # Cross-check with Avro's own implementation, which also catches anything the rules above miss.
    for datum in _samples(old):
        buffer = io.BytesIO()
        try:
            schemaless_writer(buffer, old.parsed, datum)
        except Exception:  # pragma: no cover - a sample the old schema itself rejects proves nothing
            continue
        buffer.seek(0)
        try:
            schemaless_reader(buffer, old.parsed, new.parsed)
        except Exception as exc:
            problems.append(f"{where}: fastavro cannot resolve {_shown(datum)} ({type(exc).__name__}: {exc})")
            break
    return problems


# -- history -------------------------------------------------------------------------------------------------------
def history_file(schema: Schema, history_dir: Path) -> Path:
    """Where `freeze` records a version: `<full name>.<16 hex digits of the fingerprint>.avsc`."""
    return history_dir / f"{schema.name}.{schema.fingerprint_hex}.avsc"


def frozen_versions(schema_dir: Path) -> list[Schema]:
    """Every version recorded in `schema_dir/history/`, sorted by file name; each file must be named as `freeze`
    names it (`<full name>.<fingerprint hex>.avsc`), so a hand-edited history file is caught."""
    history_dir = schema_dir / "history"
    versions = []
    for path in sorted(history_dir.glob("*.avsc")):
        schema = load_schema_file(path)
        if path.name != history_file(schema, history_dir).name:
            raise SchemaError(
                f"{path}: a history file must be named {history_file(schema, history_dir).name} (its schema's full "
                "name and fingerprint); history files are written by `switchboard schemas freeze`, never edited"
            )
        versions.append(schema)
    return versions


def freeze(schema_dir: Path) -> list[Path]:
    """Copy each current schema into `schema_dir/history/` unless that exact version is there; the new paths."""
    store = SchemaStore.from_directory(schema_dir)
    history_dir = schema_dir / "history"
    history_dir.mkdir(exist_ok=True)
    known = {schema.fingerprint for schema in frozen_versions(schema_dir)}
    written = []
    for name in store.names():
        schema = store.current(name)
        if schema.fingerprint in known:
            continue
        path = history_file(schema, history_dir)
        path.write_text(json.dumps(schema.definition, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written
