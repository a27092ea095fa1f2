"""Schemas stay backward compatible: every version ever written is readable by the current schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas import SCHEMA_DIR
from topics.compat import check_backward, freeze
from topics.schema_store import SchemaStore, load_schema_file

STORE = SchemaStore.from_directory(SCHEMA_DIR)
HISTORY = [load_schema_file(p) for p in sorted((SCHEMA_DIR / "history").glob("*.avsc"))]


@pytest.mark.parametrize("name", STORE.names())
def test_every_current_schema_is_recorded_in_history(name: str) -> None:
    current = STORE.current(name)
    recorded = {s.fingerprint for s in HISTORY}
    assert current.fingerprint in recorded, (
        f"{name} changed but this version ({current.fingerprint_hex}) is not in schemas/history/: keep the change "
        "backward compatible (new fields need defaults) and run `switchboard schemas freeze`"
    )


@pytest.mark.parametrize("old", HISTORY, ids=lambda s: s.path.name)
def test_every_recorded_version_is_readable_by_the_current_schema(old: Any) -> None:
    assert check_backward(old, STORE.current(old.name)) == []


def _write(directory: Path, fields: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "t.Thing.avsc"
    path.write_text(json.dumps({"type": "record", "name": "Thing", "namespace": "t", "fields": fields}))
    return path


BASE = [{"name": "a", "type": "string"}, {"name": "b", "type": ["null", "long"], "default": None}]


@pytest.mark.parametrize(
    ("change", "compatible"),
    [
        ([*BASE, {"name": "c", "type": "int", "default": 3}], True),     # added with a default
        ([*BASE, {"name": "c", "type": "int"}], False),                   # added without a default
        ([{"name": "a", "type": "int"}, BASE[1]], False),                 # string -> int
        ([BASE[0]], True),                                                # removed field: the reader ignores it
        ([{"name": "a", "type": ["null", "string"]}, BASE[1]], True),     # widened to an optional
    ],
)
def test_check_backward_follows_avro_resolution(tmp_path: Path, change: list[dict[str, Any]],
                                                compatible: bool) -> None:
    old = load_schema_file(_write(tmp_path / "old", BASE))
    new = load_schema_file(_write(tmp_path / "new", change))
    assert (check_backward(old, new) == []) is compatible


def test_freeze_records_each_version_once(tmp_path: Path) -> None:
    _write(tmp_path, BASE)
    first = freeze(tmp_path)
    assert [p.name for p in first] == [f"t.Thing.{load_schema_file(tmp_path / 't.Thing.avsc').fingerprint_hex}.avsc"]
    assert freeze(tmp_path) == []
    _write(tmp_path, [*BASE, {"name": "c", "type": "int", "default": 3}])
    assert len(freeze(tmp_path)) == 1
    assert len(list((tmp_path / "history").glob("*.avsc"))) == 2
