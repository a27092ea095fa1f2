"""Topics are declared once, consistently, and referred to by their declarations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from topics import Cleanup, TopicError, TopicSpec, catalog, default_store

ROOT = Path(__file__).resolve().parents[2]


def test_catalog_names_are_unique_and_each_schema_exists() -> None:
    names = [spec.name for spec in catalog.ALL]
    assert len(names) == len(set(names))
    store = default_store()
    for spec in catalog.ALL:
        assert store.current(spec.value_schema).name == spec.value_schema


def test_unknown_topic_lists_the_declared_ones() -> None:
    with pytest.raises(TopicError, match=r"declared topics: .*dialogue\.turns"):
        catalog.get("dialogue.turn")
    assert catalog.get("dialogue.turns") is catalog.DIALOGUE_TURNS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Turns"}, "dotted lower-case"),
        ({"name": "single"}, "dotted lower-case"),
        ({"partitions": 0}, "partitions must be >= 1"),
        ({"retention_ms": 0}, "retention_ms must be positive"),
    ],
)
def test_spec_validation(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"name": "a.b", "value_schema": "x.Y", "key": "k", "owner": "o", "description": "d"}
    fields.update(kwargs)
    with pytest.raises(TopicError, match=message):
        TopicSpec(**fields)  # type: ignore[arg-type]


def test_topic_config() -> None:
    spec = TopicSpec("a.b", "x.Y", "k", "o", "d", cleanup=Cleanup.COMPACT, retention_ms=None,
                     extra_config={"min.compaction.lag.ms": "0"})
    assert spec.config() == {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    assert catalog.DIALOGUE_TURNS.config() == {"cleanup.policy": "delete", "retention.ms": str(7 * 86_400_000)}


def test_no_topic_name_is_spelled_out_in_the_code() -> None:
    names = [spec.name for spec in catalog.ALL]
    pattern = re.compile("|".join(re.escape(f'"{n}"') + "|" + re.escape(f"'{n}'") for n in names))
    offenders = []
    for folder in ("agents", "streams", "serving", "infra"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == [], "refer to topics.catalog, not to topic-name strings"
