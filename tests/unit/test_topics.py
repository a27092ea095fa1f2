"""Topics are declared once, consistently, and referred to by their declarations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from topics import Cleanup, TopicError, TopicSpec, catalog, default_store
from topics.spec import DAY_MS

ROOT = Path(__file__).resolve().parents[2]
# What Kafka accepts as a topic name (and what this project allows: dotted lower-case words).
_KAFKA_LEGAL = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


def test_catalog_names_are_unique_and_valid() -> None:
    names = [spec.name for spec in catalog.ALL]
    assert len(names) == len(set(names))
    for name in names:
        assert _KAFKA_LEGAL.match(name) and name not in (".", ".."), name
        assert re.fullmatch(r"[a-z][a-z0-9]*(\.[a-z][a-z0-9_-]*)+", name), name
    # Kafka treats '.' and '_' as the same in metric names: two topics must not differ only by them.
    assert len({name.replace(".", "_") for name in names}) == len(names)


def test_every_topic_has_a_schema_in_the_store() -> None:
    store = default_store()
    for spec in catalog.ALL:
        assert store.current(spec.value_schema).name == spec.value_schema, spec.name
        assert spec.key and spec.owner and spec.description, spec.name


def test_every_catalog_constant_is_in_all() -> None:
    declared = [value for value in vars(catalog).values() if isinstance(value, TopicSpec)]
    assert sorted(spec.name for spec in declared) == sorted(spec.name for spec in catalog.ALL)


def test_get_finds_a_declared_topic_and_explains_an_unknown_one() -> None:
    for spec in catalog.ALL:
        assert catalog.get(spec.name) is spec
    with pytest.raises(TopicError) as error:
        catalog.get("dialogue.turn")
    assert "unknown topic 'dialogue.turn'" in str(error.value)
    assert "declared topics: " + ", ".join(sorted(s.name for s in catalog.ALL)) in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Turns.x"}, "topic name 'Turns.x' must be dotted lower-case words"),
        ({"name": "single"}, "dotted lower-case"),
        ({"name": "a..b"}, "dotted lower-case"),
        ({"name": "a.b c"}, "dotted lower-case"),
        ({"name": ""}, "dotted lower-case"),
        ({"name": "a.b\n"}, "dotted lower-case"),
        ({"partitions": 0}, "topic a.b: partitions must be >= 1, not 0"),
        ({"retention_ms": 0}, "topic a.b: retention_ms must be positive or -1"),
        ({"retention_ms": -2}, "retention_ms must be positive or -1"),
    ],
)
def test_spec_validation(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"name": "a.b", "value_schema": "x.Y", "key": "k", "owner": "o", "description": "d"}
    fields.update(kwargs)
    with pytest.raises(TopicError) as error:
        TopicSpec(**fields)  # type: ignore[arg-type]
    assert message in str(error.value)


def test_spec_defaults() -> None:
    spec = TopicSpec("a.b", "x.Y", "k", "o", "d")
    assert (spec.partitions, spec.cleanup, spec.retention_ms) == (4, Cleanup.DELETE, 7 * DAY_MS)
    assert TopicSpec("a.b", "x.Y", "k", "o", "d", retention_ms=-1).config()["retention.ms"] == "-1"


def test_topic_config_for_delete_and_compact() -> None:
    compact = TopicSpec("a.b", "x.Y", "k", "o", "d", cleanup=Cleanup.COMPACT, retention_ms=None,
                        extra_config={"min.compaction.lag.ms": "0"})
    assert compact.config() == {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    assert catalog.DIALOGUE_TURNS.config() == {"cleanup.policy": "delete", "retention.ms": str(7 * 86_400_000)}
    assert catalog.DEAD_LETTERS.config() == {"cleanup.policy": "delete", "retention.ms": str(30 * 86_400_000)}
    assert catalog.DEAD_LETTERS.partitions == 1
    for spec in catalog.ALL:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in spec.config().items())


def test_no_topic_name_is_spelled_out_in_the_code() -> None:
    names = [spec.name for spec in catalog.ALL]
    pattern = re.compile("|".join(re.escape(f'"{n}"') + "|" + re.escape(f"'{n}'") for n in names))
    offenders = []
    scanned = 0
    for folder in ("agents", "streams", "serving", "infra"):
        for path in (ROOT / folder).rglob("*.py"):
            scanned += 1
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert scanned > 5, "the source folders were not found"
    assert offenders == [], "refer to topics.catalog (the only place topic names are written), not to strings"
    assert pattern.search((ROOT / "topics" / "catalog.py").read_text(encoding="utf-8"))
