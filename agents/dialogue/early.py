"""Answers that arrive before the step that waits for them, kept in the session's state.

After a crash, the step that started a workflow run or sent a request can be applied again after the run's result
or the request's answers arrived: they travel on another topic than the input that started them. The session keeps
the last few such arrivals under their (derived, so repeatable) id; the step that starts the same run or request
again takes them at once instead of waiting for what has come already.
"""

from __future__ import annotations

from typing import Any


def keep_early(state: dict[str, Any], field: str, key: str, value: Any, *, limit: int, many: bool = False) -> None:
    """Keep `value` under `key` in `state[field]`, which holds the last `limit` keys; with `many`, each key holds a
    list of the values that came for it."""
    early = {k: (list(v) if many else v) for k, v in (state.get(field) or {}).items()}
    if many:
        early.setdefault(key, []).append(value)
    else:
        early[key] = value
    state[field] = dict(list(early.items())[-limit:])


def take_early(state: dict[str, Any], field: str, key: str) -> Any | None:
    """What was kept under `key` in `state[field]`, removed from it (the field goes when empty); None if nothing."""
    early = dict(state.get(field) or {})
    if key not in early:
        return None
    kept = early.pop(key)
    if early:
        state[field] = early
    else:
        state.pop(field, None)
    return kept
