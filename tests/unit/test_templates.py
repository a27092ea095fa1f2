"""Reply templates: placeholders checked at load time, rendered as readable text, structured values keep types."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.dialogue.errors import DialogueError, EvaluationError, TemplateError
from agents.dialogue.expressions import Expression
from agents.dialogue.templates import Template, compile_template, render_value, value_paths

SCOPE: dict[str, Any] = {
    "slots": {"order_id": "A-17", "qty": 3},
    "context": {"order": {"status": "shipped", "total": 0.1 + 0.2}, "name": None, "vip": True, "tags": ["a", "b"],
                "count": 2, "ratio": 2.0, "items": [{"sku": 1}]},
}
ROOTS = frozenset({"slots", "context"})


def render(text: str, scope: dict[str, Any] | None = None) -> str:
    return compile_template(text).render(SCOPE if scope is None else scope)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Your order {{ slots.order_id }} is {{ context.order.status }}", "Your order A-17 is shipped"),
        ("Hello {{ default(context.name, 'there') }}", "Hello there"),
        ("Hello {{context.name}}!", "Hello !"),
        ("Total {{ context.order.total }}", "Total 0.3"),
        ("{{ context.ratio }} x {{ slots.qty * 2 }}", "2 x 6"),
        ("VIP: {{ context.vip }}, new: {{ not context.vip }}", "VIP: yes, new: no"),
        ("Tags: {{ context.tags }}", "Tags: a, b"),
        ("{{ context.missing.deep }}", ""),
        ("{{ '}}' }} and {{ \"{{\" }}", "}} and {{"),
        ("{{ 'it\\'s' }}", "it's"),
        ("no placeholders, {single} braces", "no placeholders, {single} braces"),
        ("", ""),
        ("multi\nline {{ slots.qty }}\n", "multi\nline 3\n"),
        ("{{ upper(slots.order_id) }}{{ lower('X') }}", "A-17x"),
    ],
)
def test_renders(text: str, expected: str) -> None:
    assert render(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\{{ not a placeholder }}", "{{ not a placeholder }}"),
        ("a \\}} b", "a }} b"),
        ("\\{{ {{ slots.qty }}", "{{ 3"),
        ("path C:\\temp\\{x}", "path C:\\temp\\{x}"),
        ("\\{{x}} then {{ slots.qty }}", "{{x}} then 3"),
    ],
)
def test_escapes(text: str, expected: str) -> None:
    template = compile_template(text)
    assert template.render(SCOPE) == expected


def test_is_static_and_parts() -> None:
    static = compile_template("Hi \\{{ there }}")
    assert static.is_static and static.paths == frozenset() and static.single is None
    assert static.parts == ("Hi {{ there }}",)
    dynamic = compile_template("Hi {{ context.name }}!")
    assert not dynamic.is_static
    assert dynamic.parts[0] == "Hi " and isinstance(dynamic.parts[1], Expression) and dynamic.parts[2] == "!"
    assert compile_template("").is_static


def test_paths_and_names() -> None:
    template = compile_template("{{ slots.order_id }} {{ default(context.name, slots.qty) }}")
    assert template.paths == {"slots.order_id", "context.name", "slots.qty"}
    assert template.names == {"slots", "context"}


def test_templates_are_values() -> None:
    a, b = compile_template("x {{ slots.qty }}"), compile_template("x {{ slots.qty }}")
    assert a == b and hash(a) == hash(b) and a != compile_template("y")
    assert repr(a) == "Template('x {{ slots.qty }}')"
    assert isinstance(a, Template)


# -- load-time errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "fragment", "line", "column"),
    [
        ("Hello {{ name", "never closed", 1, 7),
        ("Hello name }}", "closes no '{{'", 1, 12),
        ("a {{ b {{ c }}", "not closed before the next", 1, 3),
        ("x {{ }}", "empty placeholder", 1, 3),
        ("x {{ 'open }}", "quote inside it is never closed", 1, 3),
        ("x {{ context.__class__ }}", "in placeholder {{ context.__class__ }}", 1, 14),
        ("x {{ __import__('os') }}", "function calls other than", 1, 6),
        ("é {{ a && b }}", "and / or", 1, 9),
        ("first\nsecond {{ a b }}", "invalid expression", 2, 13),
        ("{{ '" + "x" * 1200 + "' }}", "limit is", 1, 1),
        ("{{ lambda: 1 }}", "lambda", 1, 4),
    ],
)
def test_compile_errors_point_into_the_template(text: str, fragment: str, line: int, column: int) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(text)
    assert fragment in str(caught.value)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert isinstance(caught.value, DialogueError)


def test_known_names_are_checked() -> None:
    compile_template("{{ slots.qty }}", names=ROOTS)
    with pytest.raises(TemplateError, match="unknown name 'slot'; did you mean 'slots'"):
        compile_template("Hi {{ slot.qty }}", names=ROOTS)


def test_non_text_is_an_error() -> None:
    with pytest.raises(TemplateError, match="must be text"):
        compile_template(3)  # type: ignore[arg-type]


def test_render_errors_are_evaluation_errors() -> None:
    with pytest.raises(EvaluationError, match="division by zero"):
        render("{{ slots.qty / 0 }}")


# -- structured values --------------------------------------------------------------------------------------------
def test_render_value_keeps_types_of_single_placeholders() -> None:
    value = {
        "count": "{{ context.count }}",
        "ratio": "{{ context.ratio }}",
        "vip": "{{ context.vip }}",
        "missing": "{{ context.missing }}",
        "label": "n={{ context.count }}",
        "spaced": " {{ context.count }}",
        "nested": [{"id": "{{ slots.order_id }}"}, 5, None, True, "plain"],
        "tags": "{{ context.tags }}",
    }
    assert render_value(value, SCOPE) == {
        "count": 2, "ratio": 2.0, "vip": True, "missing": None, "label": "n=2", "spaced": " 2",
        "nested": [{"id": "A-17"}, 5, None, True, "plain"], "tags": ["a", "b"],
    }


def test_render_value_of_scalars_and_templates() -> None:
    assert render_value("{{ slots.qty + 1 }}", SCOPE) == 4
    assert render_value("qty {{ slots.qty }}", SCOPE) == "qty 3"
    assert render_value(compile_template("{{ slots.qty }}"), SCOPE) == 3
    assert render_value(7, SCOPE) == 7
    assert render_value(None, SCOPE) is None
    assert render_value(("{{ slots.qty }}",), SCOPE) == [3]


def test_render_value_copies_containers_it_returns() -> None:
    scope: dict[str, Any] = {"context": {"items": [{"sku": 1}]}}
    result = render_value("{{ context.items }}", scope)
    result[0]["sku"] = 99
    assert scope["context"]["items"] == [{"sku": 1}]


def test_render_value_leaves_keys_alone() -> None:
    assert render_value({"{{ k }}": "v"}, SCOPE) == {"{{ k }}": "v"}


def test_render_value_of_a_bad_template_is_a_template_error() -> None:
    with pytest.raises(TemplateError):
        render_value({"a": "{{ broken"}, SCOPE)


def test_value_paths_checks_every_leaf() -> None:
    assert value_paths({"a": ["{{ slots.x }}", {"b": "{{ context.y.z }} and {{ slots.x }}"}], "c": 3},
                       names=ROOTS) == {"slots.x", "context.y.z"}
    assert value_paths(compile_template("{{ slots.q }}")) == {"slots.q"}
    assert value_paths(5) == frozenset()
    with pytest.raises(TemplateError, match="unknown name 'nope'"):
        value_paths({"a": ["{{ nope }}"]}, names=ROOTS)


# -- properties ---------------------------------------------------------------------------------------------------
PIECES = ["{{", "}}", "\\{{", "\\}}", "{", "}", " ", "x", "slots.qty", "'", '"', "\\", "\n", "é", "+", "(", ")",
          "__class__", ".", "1", "#"]


def _compile_or_error(text: str) -> None:
    try:
        template = compile_template(text)
    except TemplateError as exc:
        assert exc.column is not None and exc.column >= 1
        assert exc.line is not None and 1 <= exc.line <= text.count("\n") + 1
        return
    with contextlib.suppress(EvaluationError):
        assert isinstance(template.render(SCOPE), str)


@given(st.text(max_size=300))
def test_arbitrary_text_compiles_or_raises_template_error(text: str) -> None:
    _compile_or_error(text)


@given(st.lists(st.sampled_from(PIECES), max_size=40).map("".join))
def test_brace_soup_compiles_or_raises_template_error(text: str) -> None:
    _compile_or_error(text)


@given(st.text(alphabet=st.characters(blacklist_characters="{}\\"), max_size=100))
def test_text_without_braces_renders_as_itself(text: str) -> None:
    template = compile_template(text)
    assert template.is_static and template.render({}) == text


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="{}\\"), max_size=10), max_size=5))
def test_escaped_placeholders_render_literally(words: list[str]) -> None:
    text = "".join(f"\\{{{{{word}}}}}" for word in words)
    assert compile_template(text).render({}) == "".join(f"{{{{{word}}}}}" for word in words)
