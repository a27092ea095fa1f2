"""Reply templates: text with `{{ expression }}` placeholders, checked when the policy loads, rendered per turn.

Placeholders use the policy expression language (`agents.dialogue.expressions`), so a template can do what a
condition can and nothing more. Rendering follows `to_text`: None is empty, booleans read "yes"/"no", whole floats
lose their ".0", other floats their binary noise (0.1 + 0.2 reads "0.3"), lists and mappings join with ", ".

Escapes: `\\{{` writes a literal `{{` (and the `}}` after it, so `\\{{ x }}` reads "{{ x }}"); `\\}}` writes a
lone literal `}}`. Every other backslash, and single braces, are plain text. Any other `}}` that closes nothing is
an error, since it is almost always a typo.

`render_value` renders structured action values (YAML mappings and lists): their string leaves are templates, and
a leaf that is exactly one placeholder keeps the value's type, so `"{{ context.count }}"` stays a number.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from functools import lru_cache
from typing import Any

from agents.dialogue.errors import ExpressionError, TemplateError
from agents.dialogue.expressions import Expression, compile_expression, to_text

__all__ = ["Template", "compile_template", "render_value", "value_paths"]

OPEN, CLOSE, ESCAPE = "{{", "}}", "\\"


class Template:
    """A compiled template: literal text and expressions, immutable, hashable by its source text."""

    __slots__ = ("names", "parts", "paths", "single", "text")

    def __init__(self, text: str, parts: tuple[str | Expression, ...]) -> None:
        self.text = text
        #: Literal text (escapes resolved) and placeholder expressions, in order.
        self.parts = parts
        expressions = [part for part in parts if isinstance(part, Expression)]
        self.names: frozenset[str] = frozenset().union(*(e.names for e in expressions))
        self.paths: frozenset[str] = frozenset().union(*(e.paths for e in expressions))
        #: The expression when the text is exactly one placeholder: `render_value` then keeps its value's type.
        self.single = expressions[0] if len(parts) == 1 and expressions else None

    @property
    def is_static(self) -> bool:
        """No placeholders: the reply is the same every time (escapes resolved)."""
        return not any(isinstance(part, Expression) for part in self.parts)

    def render(self, scope: Mapping[str, Any]) -> str:
        """The text with each placeholder's value; raises `EvaluationError` when a placeholder cannot be evaluated."""
        return "".join(part if isinstance(part, str) else to_text(part.evaluate(scope)) for part in self.parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def compile_template(text: str, *, names: Collection[str] | None = None) -> Template:
    """Split and check `text`; every placeholder is compiled now (`names` as for `compile_expression`)."""
    if not isinstance(text, str):
        raise TemplateError(f"a template must be text, not {type(text).__name__}")
    parts: list[str | Expression] = []
    literal: list[str] = []
    escaped = False  # after `\{{`, the next `}}` is text too: `\{{ x }}` reads "{{ x }}"
    i = 0
    while i < len(text):
        if text.startswith(ESCAPE + OPEN, i) or text.startswith(ESCAPE + CLOSE, i):
            escaped = text.startswith(OPEN, i + 1)
            literal.append(text[i + 1 : i + 3])
            i += 3
        elif escaped and text.startswith(CLOSE, i):
            escaped = False
            literal.append(CLOSE)
            i += len(CLOSE)
        elif text.startswith(OPEN, i):
            end = _closing(text, i)
            escaped = False
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_placeholder(text, i + len(OPEN), end, names))
            i = end + len(CLOSE)
        elif text.startswith(CLOSE, i):
            raise _error(text, i, "'}}' closes no '{{': write \\}} for literal braces")
        else:
            literal.append(text[i])
            i += 1
    if literal or not parts:
        parts.append("".join(literal))
    return Template(text, tuple(parts))


def render_value(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render a YAML action value: string (or `Template`) leaves are templates; keys and other leaves are kept.

    A leaf that is exactly one placeholder returns the value itself (a number stays a number); lists and mappings
    returned that way are copies, so storing them never aliases the state they were read from.
    """
    if isinstance(value, Mapping):
        return {key: render_value(item, scope) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render_value(item, scope) for item in value]
    if isinstance(value, str):
        value = _cached(value)
    if not isinstance(value, Template):
        return value
    if value.single is not None:
        result = value.single.evaluate(scope)
        return copy.deepcopy(result) if isinstance(result, list | dict) else result
    return value.render(scope)


def value_paths(value: Any, *, names: Collection[str] | None = None) -> frozenset[str]:
    """Check every template leaf of an action value when the policy loads; the dotted paths they read."""
    if isinstance(value, Mapping):
        return frozenset().union(*(value_paths(item, names=names) for item in value.values()))
    if isinstance(value, list | tuple):
        return frozenset().union(*(value_paths(item, names=names) for item in value))
    if isinstance(value, str):
        return compile_template(value, names=names).paths
    if isinstance(value, Template):
        return value.paths
    return frozenset()


@lru_cache(maxsize=1024)
def _cached(text: str) -> Template:
    return compile_template(text)


def _closing(text: str, start: int) -> int:
    """Index of the `}}` closing the placeholder opened at `start`; a `}}` inside a quoted string does not count."""
    i = start + len(OPEN)
    quote: str | None = None
    while i < len(text):
        char = text[i]
        if quote is not None:
            if char == ESCAPE:
                i += 2
                continue
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif text.startswith(CLOSE, i):
            return i
        elif text.startswith(OPEN, i):
            raise _error(text, start, "'{{' is not closed before the next '{{': add '}}' (or write \\{{ for text)")
        i += 1
    if quote is not None:
        raise _error(text, start, f"'{{{{' is never closed: a {quote} quote inside it is never closed")
    raise _error(text, start, "'{{' is never closed with '}}' (write \\{{ for literal braces)")


def _placeholder(text: str, start: int, end: int, names: Collection[str] | None) -> Expression:
    source = text[start:end]
    if not source.strip():
        raise _error(text, start - len(OPEN), "empty placeholder '{{ }}': put an expression inside")
    try:
        return compile_expression(source, names=names)
    except ExpressionError as exc:
        offset = start - len(OPEN) if exc.column is None else start + _offset_in(source, exc.line or 1, exc.column)
        raise _error(text, offset, f"in placeholder {{{{{source}}}}}: {exc.reason}") from exc


def _offset_in(text: str, line: int, column: int) -> int:
    """0-based character offset of a 1-based (line, column) in `text`."""
    position = 0
    for _ in range(line - 1):
        position = text.find("\n", position) + 1
    return position + column - 1


def _error(text: str, offset: int, message: str) -> TemplateError:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return TemplateError(message, line=line, column=column)
