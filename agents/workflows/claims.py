"""Claim checks, the pure part: how a task output that lives in object storage is referred to.

A task output larger than `workflows.claim_check_bytes` never rides the bus: the task worker stores it and the
result carries its URI (`output_uri`). The run's state keeps that URI, and the pure core (which does no I/O) hands
templates a `ClaimRef` for the output instead of its value. A `ClaimRef` is a mapping whose every key is another
`ClaimRef` one step further down, so `{{tasks.fetch.output.json.rows}}` evaluates, without any data, to "the value
at json.rows of the object at this URI". Rendered into a task's params it becomes a *marker*,
`{"$claim_check": {"uri": ..., "path": [...]}}`, which the task worker replaces by the value (read from storage)
before it calls the executor. A run's final output may hold markers too; `resolve_markers` turns them into values
wherever I/O is allowed (the `switchboard workflow` commands, a requester).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Final

__all__ = ["MARKER", "ClaimRef", "as_markers", "find_markers", "is_marker", "marker", "navigate", "resolve_markers"]

#: The key of a marker object: long and unusual, so that it does not collide with a task's own data.
MARKER: Final = "$claim_check"


class ClaimRef(Mapping[str | int, Any]):
    """The value at `path` inside the JSON object stored at `uri`, known only by reference.

    Looking a key up never fails: it is a reference one level deeper (a missing key reads None once resolved, as
    it does for an inline output). It has no length and no items, so code that needs the value itself (text
    interpolation, arithmetic, a condition) cannot be given one: the core refuses those with an error instead.
    """

    __slots__ = ("path", "uri")

    def __init__(self, uri: str, path: tuple[str | int, ...] = ()) -> None:
        self.uri = uri
        self.path = path

    def __getitem__(self, key: str | int) -> ClaimRef:
        return ClaimRef(self.uri, (*self.path, key))

    def get(self, key: str | int, default: Any = None) -> ClaimRef:
        return self[key]

    def __iter__(self) -> Iterator[str | int]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClaimRef) and (other.uri, other.path) == (self.uri, self.path)

    def __hash__(self) -> int:
        return hash((self.uri, self.path))

    def __repr__(self) -> str:
        return f"ClaimRef({self.uri!r}, {list(self.path)!r})"


def marker(uri: str, path: tuple[str | int, ...] | list[str | int] = ()) -> dict[str, Any]:
    """The JSON form of a reference: what travels in task params, run outputs and transitions."""
    return {MARKER: {"uri": uri, "path": list(path)}}


def is_marker(value: Any) -> bool:
    return (isinstance(value, Mapping) and len(value) == 1 and isinstance(value.get(MARKER), Mapping)
            and isinstance(value[MARKER].get("uri"), str))


def as_markers(value: Any) -> Any:
    """`value` with every `ClaimRef` in it turned into its marker (plain JSON again)."""
    if isinstance(value, ClaimRef):
        return marker(value.uri, value.path)
    if isinstance(value, Mapping):
        return {key: as_markers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_markers(item) for item in value]
    return value


def find_markers(value: Any) -> Iterator[dict[str, Any]]:
    """Every marker in a JSON value."""
    if is_marker(value):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from find_markers(item)
    elif isinstance(value, list):
        for item in value:
            yield from find_markers(item)


def navigate(value: Any, path: Sequence[str | int]) -> Any:
    """The value at `path`, looked up as the expression language does: anything missing is None."""
    for key in path:
        if isinstance(value, Mapping):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            return None
    return value


async def resolve_markers(value: Any, load: Callable[[str], Awaitable[Any]]) -> Any:
    """`value` with every marker replaced by the value it refers to; `load(uri)` reads a stored JSON object (each
    URI is read once)."""
    cache: dict[str, Any] = {}

    async def walk(item: Any) -> Any:
        if is_marker(item):
            uri = item[MARKER]["uri"]
            if uri not in cache:
                cache[uri] = await load(uri)
            return navigate(cache[uri], item[MARKER].get("path") or [])
        if isinstance(item, Mapping):
            return {key: await walk(sub) for key, sub in item.items()}
        if isinstance(item, list):
            return [await walk(sub) for sub in item]
        return item

    return await walk(value)
