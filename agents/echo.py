"""The first agent: answers every turn addressed to it by greeting or echoing. Pure and deterministic."""

from __future__ import annotations

import re
from collections.abc import Sequence

from topics import catalog
from topics.event import Event
from topics.processor import Emit

NAME = "echo"
SOURCE = f"/switchboard/agents/{NAME}"
_GREETING = re.compile(r"^\s*(hi|hello|hey|您好|你好)\b", re.IGNORECASE)


def answer(text: str) -> str:
    if _GREETING.match(text):
        return "Hello! I am Switchboard's echo agent. Say anything and I will say it back."
    return f"You said: {text}"


class EchoAgent:
    """Replies to `dialogue.turns` addressed to agent `echo` on `dialogue.replies`."""

    name = NAME
    source = catalog.DIALOGUE_TURNS

    def handle(self, event: Event) -> Sequence[Emit]:
        turn = event.data
        if turn["agent"] != NAME:
            return ()
        reply = event.caused(
            catalog.DIALOGUE_REPLIES.value_schema,
            SOURCE,
            {
                "session_id": turn["session_id"],
                "agent": NAME,
                "text": answer(turn["text"]),
                "in_reply_to": event.id,
            },
            effect="reply",
            subject=turn["session_id"],
        )
        return (Emit(catalog.DIALOGUE_REPLIES, reply),)
