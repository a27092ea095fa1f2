"""The first agent: greets, then echoes, counting the turns of each conversation. Pure and deterministic.

Its only state is a turn counter per session, which makes it the smallest agent whose state must survive worker
crashes exactly (the kill tests check that turn numbers never skip or repeat).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from topics import catalog
from topics.event import Event
from topics.processor import Emit, State

NAME = "echo"
SOURCE = f"/switchboard/agents/{NAME}"
_GREETING = re.compile(r"^\s*(hi|hello|hey|您好|你好)\b", re.IGNORECASE)


def answer(text: str, turn: int) -> str:
    if _GREETING.match(text):
        if turn == 1:
            return "Hello! I am Switchboard's echo agent. Say anything and I will say it back."
        return f"Hello again! This is turn {turn} of our conversation."
    return f"You said: {text} (turn {turn})"


class EchoAgent:
    """Replies to `dialogue.turns` addressed to agent `echo` on `dialogue.replies`."""

    name = NAME
    source = catalog.DIALOGUE_TURNS

    def initial(self, subject: str) -> State:
        return {"turns": 0}

    def step(self, state: State, event: Event) -> tuple[State, Sequence[Emit]]:
        turn = event.data
        if turn["agent"] != NAME:
            return state, ()
        count = int(state["turns"]) + 1
        reply = event.caused(
            catalog.DIALOGUE_REPLIES.value_schema,
            SOURCE,
            {
                "session_id": turn["session_id"],
                "agent": NAME,
                "text": answer(turn["text"], count),
                "in_reply_to": event.id,
            },
            effect="reply",
            subject=turn["session_id"],
        )
        return {"turns": count}, (Emit(catalog.DIALOGUE_REPLIES, reply),)
