"""Every topic of Switchboard, declared once. Code refers to these objects, never to topic-name strings."""

from __future__ import annotations

from topics.errors import TopicError
from topics.spec import DAY_MS, TopicSpec

DIALOGUE_TURNS = TopicSpec(
    name="dialogue.turns",
    value_schema="switchboard.dialogue.Turn",
    key="session id",
    owner="channels (chat, voice, upstream systems)",
    description="What people and upstream systems say; each turn is answered on dialogue.replies.",
)
DIALOGUE_REPLIES = TopicSpec(
    name="dialogue.replies",
    value_schema="switchboard.dialogue.Reply",
    key="session id",
    owner="dialogue processors",
    description="Agents' answers to turns; ids derive from the turn, so duplicates are recognisable.",
)
DEAD_LETTERS = TopicSpec(
    name="bus.deadletters",
    value_schema="switchboard.bus.DeadLetter",
    key="original topic",
    owner="every stream processor",
    description="Messages a processor could not handle, with the reason and the original bytes.",
    partitions=1,
    retention_ms=30 * DAY_MS,
)

ALL: tuple[TopicSpec, ...] = (DIALOGUE_TURNS, DIALOGUE_REPLIES, DEAD_LETTERS)
_BY_NAME = {spec.name: spec for spec in ALL}
if len(_BY_NAME) != len(ALL):  # pragma: no cover - a declaration mistake caught at import
    raise TopicError("two topics in topics/catalog.py share a name")


def get(name: str) -> TopicSpec:
    """The declared topic called `name`; the error lists the declared ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise TopicError(f"unknown topic {name!r}; declared topics: {', '.join(sorted(_BY_NAME))}") from None
