"""MQTT topic filters and topic templates, with named levels. Pure functions, no I/O.

A filter is an MQTT topic filter whose single-level wildcards may be named: `sensors/{device_id}/{metric}` is
subscribed as `sensors/+/+` and a match yields `{"device_id": ..., "metric": ...}`. `+` and a final `#` work as in
MQTT and capture nothing. A template is a topic with placeholders that fill whole levels, e.g.
`devices/{device_id}/set`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"^\{([^{}]*)\}$")
_FORBIDDEN_IN_LEVEL = ("+", "#", "{", "}", "\x00")


def _placeholder(level: str) -> str | None:
    """The name in a `{name}` level, None for any other level; a malformed name is an error."""
    match = _PLACEHOLDER.fullmatch(level)
    if match is None:
        return None
    name = match.group(1)
    if not _NAME.fullmatch(name):
        raise ValueError(f"{{{name}}}: a level name must be letters, digits and '_', not starting with a digit")
    return name


def _check_literal(level: str, text: str) -> None:
    bad = [c for c in _FORBIDDEN_IN_LEVEL if c in level]
    if bad:
        raise ValueError(f"{text!r}: level {level!r} mixes text with {' '.join(bad)}; a wildcard or {{name}} "
                         "must be a whole level")


@dataclass(frozen=True)
class TopicFilter:
    """An MQTT topic filter whose `+` levels may carry names (`{name}`)."""

    text: str
    levels: tuple[str, ...]  # each: a literal, "+", "#", or "{name}"
    names: tuple[tuple[int, str], ...]  # (level index, name) of the named levels

    @property
    def subscription(self) -> str:
        """What is sent to the broker: named levels become `+`."""
        return "/".join("+" if _PLACEHOLDER.fullmatch(level) else level for level in self.levels)

    @property
    def wildcard_levels(self) -> tuple[int, ...]:
        return tuple(i for i, level in enumerate(self.levels) if level == "+" or _PLACEHOLDER.fullmatch(level))

    def match(self, topic: str) -> dict[str, str] | None:
        """The named levels' values when `topic` matches, else None (MQTT rules, `$` topics included)."""
        parts = topic.split("/")
        first = self.levels[0]
        if topic.startswith("$") and (first in ("+", "#") or _PLACEHOLDER.fullmatch(first)):
            return None  # wildcards at the first level never match topics starting with '$' (MQTT 4.7.2)
        values: dict[str, str] = {}
        for i, level in enumerate(self.levels):
            if level == "#":
                return values
            if i >= len(parts):
                return None
            name = _placeholder(level)
            if name is not None:
                values[name] = parts[i]
            elif level != "+" and level != parts[i]:
                return None
        return values if len(parts) == len(self.levels) else None


def parse_filter(text: str) -> TopicFilter:
    """Parse a filter; ValueError says what is wrong with it."""
    if not text:
        raise ValueError("an MQTT topic filter cannot be empty")
    levels = tuple(text.split("/"))
    names: list[tuple[int, str]] = []
    for i, level in enumerate(levels):
        if level == "#":
            if i != len(levels) - 1:
                raise ValueError(f"{text!r}: '#' must be the last level")
            continue
        if level == "+":
            continue
        name = _placeholder(level)
        if name is not None:
            if name in (n for _, n in names):
                raise ValueError(f"{text!r}: level name {{{name}}} is used twice")
            names.append((i, name))
            continue
        _check_literal(level, text)
    return TopicFilter(text=text, levels=levels, names=tuple(names))


@dataclass(frozen=True)
class TopicTemplate:
    """A topic with `{name}` placeholders, each filling a whole level."""

    text: str
    levels: tuple[str, ...]

    @property
    def placeholders(self) -> tuple[str, ...]:
        return tuple(name for level in self.levels if (name := _placeholder(level)) is not None)

    def render(self, values: Mapping[str, object]) -> str:
        """The topic for `values`; ValueError when a value is missing or cannot be one topic level."""
        out = []
        for level in self.levels:
            name = _placeholder(level)
            if name is None:
                out.append(level)
                continue
            if name not in values or values[name] is None:
                raise ValueError(f"topic template {self.text!r} needs {name!r}, which the event does not have")
            value = str(values[name])
            if not value or any(c in value for c in ("/", "+", "#", "\x00")):
                raise ValueError(f"{name}={value!r} cannot be an MQTT topic level (empty, or contains / + # NUL)")
            out.append(value)
        return "/".join(out)

    def as_filter(self) -> TopicFilter:
        """The filter matching every topic this template can render (placeholders as `+`)."""
        return parse_filter("/".join("+" if _placeholder(level) is not None else level for level in self.levels))


def parse_template(text: str) -> TopicTemplate:
    if not text:
        raise ValueError("an MQTT topic template cannot be empty")
    levels = tuple(text.split("/"))
    for level in levels:
        if _placeholder(level) is None:
            _check_literal(level, text)
    return TopicTemplate(text=text, levels=levels)


def filters_overlap(a: TopicFilter, b: TopicFilter) -> bool:
    """Whether some topic matches both filters."""
    for i in range(max(len(a.levels), len(b.levels))):
        x = a.levels[i] if i < len(a.levels) else None
        y = b.levels[i] if i < len(b.levels) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        wild_x = x == "+" or _PLACEHOLDER.fullmatch(x) is not None
        wild_y = y == "+" or _PLACEHOLDER.fullmatch(y) is not None
        if not (wild_x or wild_y) and x != y:
            return False
    return True
