"""Schemas stay backward compatible: every version ever written is readable by the current schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas import SCHEMA_DIR
from topics import AvroCodec, SchemaError, SchemaStore, compat
from topics.compat import check_backward, freeze, frozen_versions, history_file
from topics.schema_store import Schema, load_schema_file

STORE = SchemaStore.from_directory(SCHEMA_DIR)
HISTORY = frozen_versions(SCHEMA_DIR)  # also checks every history file is named <full name>.<fingerprint>.avsc


# -- the repository's schemas ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", STORE.names())
def test_every_current_schema_is_recorded_in_history(name: str) -> None:
    current = STORE.current(name)
    recorded = {s.fingerprint for s in HISTORY}
    assert current.fingerprint in recorded, (
        f"{name} changed, and this version ({current.fingerprint_hex}) is not in schemas/history/: run "
        "`switchboard schemas freeze` after changing a schema, and keep it backward compatible (new fields need "
        "defaults; see docs/events.md)"
    )


@pytest.mark.parametrize("old", HISTORY, ids=lambda s: s.path.name)
def test_every_recorded_version_is_readable_by_the_current_schema(old: Schema) -> None:
    assert old.name in STORE.names(), f"{old.path.name}: schema {old.name} was removed; old messages need it"
    assert check_backward(old, STORE.current(old.name)) == []


def test_history_holds_exactly_the_files_freeze_writes() -> None:
    for schema in HISTORY:
        assert schema.path == history_file(schema, SCHEMA_DIR / "history")
        assert len(schema.path.name.split(".")[-2]) == 16  # 8 bytes of fingerprint, hex
    assert {s.fingerprint for s in HISTORY} <= {s.fingerprint for s in STORE.versions()}


# -- check_backward on made-up schemas ---------------------------------------------------------------------------
def _write(directory: Path, fields: list[dict[str, Any]], name: str = "Thing") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"t.{name}.avsc"
    path.write_text(json.dumps({"type": "record", "name": name, "namespace": "t", "fields": fields}))
    return path


def _pair(tmp_path: Path, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> tuple[Schema, Schema]:
    return load_schema_file(_write(tmp_path / "old", old)), load_schema_file(_write(tmp_path / "new", new))


BASE: list[dict[str, Any]] = [{"name": "a", "type": "string"}, {"name": "b", "type": ["null", "long"], "default": None}]
COLOR = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}
INNER = {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]}


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (BASE, [*BASE, {"name": "c", "type": "int", "default": 3}], None),
        (BASE, [BASE[0]], None),  # a removed field: the reader skips it
        (BASE, [{"name": "a", "type": ["null", "string"], "default": None}, BASE[1]], None),  # made optional
        (BASE, [BASE[0], {"name": "b", "type": ["null", "double"], "default": None}], None),  # long -> double
        (BASE, [{"name": "a", "type": "bytes"}, BASE[1]], None),  # string <-> bytes
        (BASE, [{"name": "z", "type": "string", "aliases": ["a"]}, BASE[1]], None),  # renamed with an alias
        ([{"name": "c", "type": COLOR}], [{"name": "c", "type": {**COLOR, "symbols": ["RED", "GREEN", "BLUE"]}}],
         None),
        ([{"name": "c", "type": COLOR}],
         [{"name": "c", "type": {**COLOR, "symbols": ["RED", "OTHER"], "default": "OTHER"}}], None),
        ([{"name": "r", "type": INNER}], [{"name": "r", "type": {**INNER, "name": "Moved", "aliases": ["Inner"]}}],
         None),
        (BASE, [*BASE, {"name": "c", "type": "int"}], "t.Thing.c: added without a default"),
        (BASE, [{"name": "a", "type": "int"}, BASE[1]], "t.Thing.a: type changed from string to int"),
        (BASE, [BASE[0], {"name": "b", "type": ["null", "int"], "default": None}], "t.Thing.b: old data holds long"),
        (BASE, [BASE[0], {"name": "b", "type": "long"}], "t.Thing.b: old data may hold null"),
        ([{"name": "c", "type": COLOR}], [{"name": "c", "type": {**COLOR, "symbols": ["RED"]}}],
         "t.Thing.c: enum t.Color dropped symbol(s) GREEN"),
        ([{"name": "r", "type": INNER}, {"name": "again", "type": "Inner"}],
         [{"name": "r", "type": {**INNER, "fields": [*INNER["fields"], {"name": "y", "type": "int"}]}},
          {"name": "again", "type": "Inner"}], "t.Thing.r.y: added without a default"),
        ([{"name": "r", "type": INNER}], [{"name": "r", "type": {**INNER, "name": "Moved"}}],
         "t.Thing.r: type changed from record t.Inner to record t.Moved"),
        ([{"name": "l", "type": {"type": "array", "items": "int"}}],
         [{"name": "l", "type": {"type": "array", "items": "string"}}], "t.Thing.l[]: type changed from int"),
        ([{"name": "m", "type": {"type": "map", "values": "long"}}],
         [{"name": "m", "type": {"type": "map", "values": "int"}}], "t.Thing.m{}: type changed from long to int"),
    ],
    ids=["add-with-default", "remove", "make-optional", "long-to-double", "string-to-bytes", "field-alias",
         "enum-add-symbol", "enum-drop-with-default", "record-alias", "add-without-default", "string-to-int",
         "union-narrowed", "optional-to-required", "enum-drop-symbol", "nested-add-without-default",
         "record-renamed", "array-items-changed", "map-values-narrowed"],
)
def test_check_backward_follows_avro_resolution(tmp_path: Path, old: list[dict[str, Any]],
                                                new: list[dict[str, Any]], problem: str | None) -> None:
    before, after = _pair(tmp_path, old, new)
    problems = check_backward(before, after)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) >= 1
        assert problem in problems[0]
        assert before.fingerprint_hex in problems[0] and after.fingerprint_hex in problems[0]


def test_a_renamed_schema_is_incompatible(tmp_path: Path) -> None:
    old = load_schema_file(_write(tmp_path / "old", BASE))
    new = load_schema_file(_write(tmp_path / "new", BASE, name="Other"))
    assert "full name changed from t.Thing to t.Other" in check_backward(old, new)[0]


def test_fastavro_is_the_final_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the structural rules switched off, Avro's own resolution still catches the incompatible change."""
    monkeypatch.setattr(compat._Resolution, "check", lambda self, w, r, path: None)
    old, new = _pair(tmp_path, BASE, [{"name": "a", "type": "int"}, BASE[1]])
    (problem,) = check_backward(old, new)
    assert "fastavro cannot resolve" in problem and "string is not int" in problem
    old, new = _pair(tmp_path, BASE, [*BASE, {"name": "c", "type": "int", "default": 3}])
    assert check_backward(old, new) == []


# -- freeze and history ----------------------------------------------------------------------------------------
def test_freeze_records_each_version_once(tmp_path: Path) -> None:
    _write(tmp_path, BASE)
    first = freeze(tmp_path)
    fingerprint = load_schema_file(tmp_path / "t.Thing.avsc").fingerprint_hex
    assert [p.name for p in first] == [f"t.Thing.{fingerprint}.avsc"]
    assert freeze(tmp_path) == []
    _write(tmp_path, [*BASE, {"name": "c", "type": "int", "default": 3}])
    assert len(freeze(tmp_path)) == 1
    assert [s.path.name for s in frozen_versions(tmp_path)] == sorted(
        p.name for p in (tmp_path / "history").glob("*.avsc"))
    assert len(frozen_versions(tmp_path)) == 2


def test_frozen_versions_rejects_a_hand_named_history_file(tmp_path: Path) -> None:
    _write(tmp_path, BASE)
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "t.Thing.v1.avsc").write_text((tmp_path / "t.Thing.avsc").read_text())
    with pytest.raises(SchemaError, match=r"must be named t\.Thing\.[0-9a-f]{16}\.avsc"):
        frozen_versions(tmp_path)
    # The store itself loads any history file: decoders stay lenient, the test suite is strict.
    assert len(SchemaStore.from_directory(tmp_path).versions()) == 1


def test_evolving_a_schema_end_to_end(tmp_path: Path) -> None:
    """Change, freeze, and old messages still decode with the store loaded from the folder."""
    _write(tmp_path, BASE)
    freeze(tmp_path)
    old_message = AvroCodec(SchemaStore.from_directory(tmp_path)).encode("t.Thing", {"a": "x", "b": 5})
    _write(tmp_path, [BASE[0], {"name": "b", "type": ["null", "double"], "default": None},
                      {"name": "c", "type": "string", "default": "new"}])
    assert [p.name.split(".")[1] for p in freeze(tmp_path)] == ["Thing"]
    store = SchemaStore.from_directory(tmp_path)
    for old in frozen_versions(tmp_path):
        assert check_backward(old, store.current("t.Thing")) == []
    assert AvroCodec(store).decode(old_message).datum == {"a": "x", "b": 5.0, "c": "new"}
