"""Policy expressions: a whitelist interpreter that answers rather than fails, and never runs Python."""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.dialogue.errors import DialogueError, EvaluationError, ExpressionError
from agents.dialogue.expressions import (
    FUNCTIONS,
    MAX_DEPTH,
    MAX_LENGTH,
    Expression,
    compile_expression,
    to_text,
    truthy,
)
from topics.errors import SwitchboardError

SCOPE: dict[str, Any] = {
    "context": {"session_started": True, "retries": 1, "count": None, "order": {"status": "shipped", "total": 19.5},
                "tags": ["vip", "new"], "name": "Ann"},
    "slots": {"order_id": None, "email": "ann@example.com"},
    "entities": {"product": "printer", "qty": 2},
    "intent": "order_status",
    "confidence": 0.7,
    "text": "12345",
    "history": [{"role": "user", "text": "hi"}, {"role": "bot", "text": "hello"}, {"role": "user", "text": "x"},
                {"role": "bot", "text": "y"}],
    "turn": 4,
}
ROOTS = frozenset({"context", "slots", "entities", "intent", "confidence", "text", "history", "turn"})


def ev(source: str, scope: dict[str, Any] | None = None) -> Any:
    return compile_expression(source).evaluate(SCOPE if scope is None else scope)


# -- the examples policies use -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('context.session_started and intent == "order_status" and confidence >= 0.6', True),
        ('context.session_started and intent == "order_status" and confidence >= 0.8', False),
        ("not slots.order_id", True),
        ("not slots.email", False),
        ("len(history) > 3", True),
        ('entities.product in ["printer", "laptop"]', True),
        ('entities.product not in ("printer", "laptop")', False),
        ("context.retries + 1 < 3", True),
        (r'matches(text, "^\d+$")', True),
        (r'matches("ab12", "\d")', True),
        (r'matches("abc", "^\d+$")', False),
        ("context.count == none", True),
        ("context.count == null", True),
        ("context.count == None", True),
        ("context.retries != none", True),
        ("context.session_started == true", True),
        ("context.session_started == True", True),
        ("false or context.name", "Ann"),
        ("context.missing or 'fallback'", "fallback"),
        ("context.name and context.retries", 1),
        ("1 < context.retries + 1 < 3", True),
        ("1 < 2 < 2", False),
        ("-context.retries", -1),
        ("+context.retries", 1),
        ("context.order.total * 2 - 1", 38.0),
        ("7 % 3", 1),
        ("7 / 2", 3.5),
        ('"a" + "b"', "ab"),
        ('context["order"]["status"]', "shipped"),
        ("history[0].text", "hi"),
        ("history[-1].role", "bot"),
        ("history[10]", None),
        ("context.tags[1]", "new"),
        ('"vip" in context.tags', True),
        ('"order" in context', True),
        ('"ship" in context.order.status', True),
        ("[1, 2] == [1, 2]", True),
    ],
)
def test_evaluates(source: str, expected: Any) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("len(context.tags)", 2),
        ("len(context.order)", 2),
        ("len(context.missing)", 0),
        ("len(turn)", None),
        ("lower('ABC')", "abc"),
        ("upper(context.name)", "ANN"),
        ("strip('  x ')", "x"),
        ("lower(12)", "12"),
        ("lower(context.missing)", None),
        ("upper(context.tags)", None),
        ("int('42')", 42),
        ("int(' 7 ')", 7),
        ("int(3.9)", 3),
        ("int(true)", 1),
        ("int(context.missing)", None),
        ("float('2.5')", 2.5),
        ("float(2)", 2.0),
        ("float(none)", None),
        ("str(2.0)", "2"),
        ("str(none)", ""),
        ("str(true)", "yes"),
        ("str(context.tags)", "vip, new"),
        ("contains(context.tags, 'vip')", True),
        ("contains(context.name, 'nn')", True),
        ("contains(none, 'x')", False),
        ("startswith(slots.email, 'ann')", True),
        ("endswith(slots.email, '.com')", True),
        ("endswith(none, '.com')", False),
        ("startswith(123, 12)", True),
        ("default(context.missing, 'there')", "there"),
        ("default(context.name, 'there')", "Ann"),
        ("default(context.retries, 5)", 1),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("round(2.567)", 3),
        ("round('x')", None),
        ("matches(none, 'x')", False),
        ("matches(12345, '^1')", True),
        ("matches('x', context.missing)", False),
    ],
)
def test_functions(source: str, expected: Any) -> None:
    result = ev(source)
    assert result == expected
    assert type(result) is type(expected)


# -- forgiving semantics ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source",
    [
        "context.nope.deeper.still",
        "missing_root",
        "missing_root.x",
        "text.upper",  # attribute of a string: not reachable, None
        "context.retries.real",  # attribute of an int
        "history.append",
        "context.tags.count",
        "context.missing + 1",
        "'a' + 1",
        "[1] + [2]",
        "'a' * 3",
        "-'a'",
        "+none",
        "context.name - 1",
        "true + 1",
    ],
)
def test_missing_or_mismatched_is_none(source: str) -> None:
    assert ev(source) is None


@pytest.mark.parametrize(
    "source",
    [
        "none < 3", "none > 3", "none <= 3", "none >= 3", "3 < none",
        "'a' < 1", "[1] < 'a'", "context.missing + 1 < 3", "true < 2", "[1] < ['a']",
        "context.order < context.order", "'x' in none", "1 in 'abc'", "[1] in context", "1 in 5",
        "1 == true", "0 == false", "none == 0", "none == ''",
    ],
)
def test_comparisons_without_an_answer_are_false(source: str) -> None:
    assert ev(source) is False


def test_not_in_is_the_negation_of_in() -> None:
    assert ev("'x' not in none") is True
    assert ev("'vip' not in context.tags") is False


def test_ordering_of_text_and_lists() -> None:
    assert ev("'a' < 'b'") is True
    assert ev("[1, 2] < [1, 3]") is True
    assert ev("(1, 2) >= [1, 2]") is True


def test_nan_is_false_and_never_orders() -> None:
    scope = {"x": math.nan}
    assert ev("x < 1", scope) is False
    assert ev("x >= 1", scope) is False
    assert truthy(math.nan) is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), (False, False), (True, True), (0, False), (0.0, False), (2, True), (-1.5, True), ("", False),
     ("0", True), ([], False), ([0], True), ({}, False), ({"a": 1}, True), ((), False), (set(), False),
     (object(), True)],
)
def test_truthy(value: Any, expected: bool) -> None:
    assert truthy(value) is expected


def test_missing_scope_keys_and_non_dict_scope_values() -> None:
    assert ev("context.a.b", {}) is None
    assert ev("context.a", {"context": "text"}) is None
    assert ev("context[0]", {"context": ["first"]}) == "first"
    assert ev("context[1]", {"context": {1: "int key"}}) == "int key"
    assert ev("context['a b']", {"context": {"a b": 3}}) == 3


# -- run-time errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("1 / 0", "division by zero"),
        ("context.retries % 0", "division by zero"),
        ("1 / (context.retries - 1)", "division by zero"),
        ("int('abc')", "whole number"),
        ("int('3.5')", "whole number"),
        ("int(context.tags)", "whole number"),
        ("float('x')", "number"),
        ("float(context.order)", "number"),
        ("int(float('inf'))", "whole number"),
        ("round(float('nan'))", "round"),
        ("round(1.5, 100)", "digits"),
        ("round(1.5, 'x')", "digits"),
        ("matches('x', context.pattern)", "regular expression"),
    ],
)
def test_evaluation_errors_name_the_expression(source: str, fragment: str) -> None:
    with pytest.raises(EvaluationError) as caught:
        ev(source, {**SCOPE, "context": {**SCOPE["context"], "pattern": "(unclosed"}})
    message = str(caught.value)
    assert fragment in message
    assert f"`{source}`" in message
    assert isinstance(caught.value, ExpressionError)
    assert isinstance(caught.value, DialogueError)
    assert isinstance(caught.value, SwitchboardError)


def test_short_circuit_skips_errors() -> None:
    assert ev("false and 1 / 0") is False
    assert ev("true or 1 / 0") is True


# -- compile-time errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "fragment", "column"),
    [
        ('__import__("os")', "function calls other than len, lower", 1),
        ('__import__("os").system("ls")', "method calls are not allowed", 1),
        ("().__class__", "'__'", 4),
        ("().__class__.__bases__[0].__subclasses__()", "not allowed", 1),
        ("context.__class__", "attributes starting with '__'", 9),
        ("context.__dict__", "attributes starting with '__'", 9),
        ("context['__class__']", "keys starting with '__'", 9),
        ("__builtins__", "names starting with '__'", 1),
        ("lambda: 1", "lambda", 1),
        ("(lambda x: x)(1)", "function calls other than", 1),
        ("[x for x in history]", "comprehensions", 1),
        ("{x for x in history}", "comprehensions", 1),
        ("{x: 1 for x in history}", "comprehensions", 1),
        ("any(x for x in history)", "function calls other than", 1),
        ("(x := 1)", "assignment expressions", 2),
        ('f"{context}"', "f-strings", 1),
        ("1 if true else 2", "conditional expressions", 1),
        ("{'a': 1}", "dict literals", 1),
        ("{1, 2}", "set literals", 1),
        ("history[1:2]", "index must be", 9),
        ("history[turn]", "index must be", 9),
        ("context.x is none", "'is' is not allowed", 1),
        ("2 ** 10", "only the arithmetic operators", 1),
        ("7 // 2", "only the arithmetic operators", 1),
        ("1 << 2", "only the arithmetic operators", 1),
        ("~1", "~ is not allowed", 1),
        ("text.lower()", "method calls are not allowed", 1),
        ("foo(1)", "(found foo())", 1),
        ("len()", "len() takes 1 argument, not 0", 1),
        ("round(1, 2, 3)", "round() takes 1 or 2 arguments", 1),
        ("len(x=history)", "keyword arguments", 5),
        ("len(*history)", "starred", 5),
        ("b'bytes'", "bytes literals", 1),
        ("1j", "complex literals", 1),
        ("...", "ellipsis literals", 1),
        ("matches(text, '(')", "invalid regular expression", 15),
        ("matches(text, 3)", "pattern as text", 15),
        ("a && b", "and / or", 4),
        ("a || b", "and / or", 4),
        ("!a", "not instead of !", 1),
        ("x = 1", "==", 3),
        ("a b", "invalid expression", 3),
        ("(a", "never closed", 1),
        ("'abc", "unterminated string", 1),
        ("context.x # comment", "comment", 11),
        ("await x", "await", 1),
        ("(yield x)", "yield", 2),
    ],
)
def test_compile_errors_say_what_and_where(source: str, fragment: str, column: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(source)
    assert fragment in str(caught.value)
    assert caught.value.column == column
    assert not isinstance(caught.value, EvaluationError)


def test_the_forbidden_function_message_lists_the_allowed_ones() -> None:
    with pytest.raises(ExpressionError, match="function calls other than len, lower, upper") as caught:
        compile_expression("eval('1')")
    for name in FUNCTIONS:
        assert name in str(caught.value)


def test_columns_count_characters_not_bytes() -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression('"éé" + context.__class__')
    assert caught.value.column == 16


def test_multi_line_sources_are_accepted_and_located() -> None:
    folded = "context.session_started\n  and intent == 'order_status'\n"
    assert compile_expression(folded).evaluate(SCOPE) is True
    with pytest.raises(ExpressionError) as caught:
        compile_expression("context.a and\n  context.__x__")
    assert (caught.value.line, caught.value.column) == (2, 11)
    assert "line 2, column 11" in str(caught.value)


def test_leading_whitespace_is_fine() -> None:
    assert compile_expression("   turn > 3").evaluate(SCOPE) is True


@pytest.mark.parametrize("source", ["", "   ", "\n"])
def test_empty_is_an_error(source: str) -> None:
    with pytest.raises(ExpressionError, match="empty"):
        compile_expression(source)


def test_non_text_source_is_an_error() -> None:
    with pytest.raises(ExpressionError, match="must be text, not bool"):
        compile_expression(True)  # type: ignore[arg-type]


def test_null_byte_is_an_error() -> None:
    with pytest.raises(ExpressionError):
        compile_expression("a\x00")


def test_length_limit() -> None:
    ok = " or ".join(["turn"] * ((MAX_LENGTH - 4) // 8))
    assert len(ok) <= MAX_LENGTH
    compile_expression(ok)
    with pytest.raises(ExpressionError, match=f"limit is {MAX_LENGTH}"):
        compile_expression("1 + " * 300 + "1")


def test_depth_limit() -> None:
    compile_expression("-" * (MAX_DEPTH - 1) + "1")
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_expression("-" * (MAX_DEPTH + 1) + "1")
    with pytest.raises(ExpressionError):
        compile_expression("(" * 250 + "1" + ")" * 250)
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_expression("a" + ".b" * (MAX_DEPTH + 1))
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_expression("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))


def test_regex_escapes_in_literals_raise_no_warning() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert compile_expression(r'matches(text, "^\d{5}$")').evaluate(SCOPE) is True
    assert not seen, [str(w.message) for w in seen]


# -- known names --------------------------------------------------------------------------------------------------
def test_known_names_are_checked_at_compile_time() -> None:
    compile_expression("context.x and slots.y", names=ROOTS)
    with pytest.raises(ExpressionError, match="unknown name 'contxt'; did you mean 'context'") as caught:
        compile_expression("slots.y and contxt.x", names=ROOTS)
    assert caught.value.column == 13
    assert "Expressions may use: confidence, context" in str(caught.value)


def test_constants_and_functions_need_not_be_known_names() -> None:
    compile_expression("len(history) > 0 and context.x != none and true", names=ROOTS)
    with pytest.raises(ExpressionError, match="unknown name 'len'"):
        compile_expression("len", names=ROOTS)


def test_without_known_names_unknown_roots_are_none() -> None:
    assert compile_expression("whatever.x").evaluate(SCOPE) is None


# -- names and paths ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "names", "paths"),
    [
        ("not slots.order_id", {"slots"}, {"slots.order_id"}),
        ("context.count == none and context.order.status", {"context"}, {"context.count", "context.order.status"}),
        ("len(history) > 3", {"history"}, {"history"}),
        ("history[0].text", {"history"}, {"history"}),
        ("context['order id'].x", {"context"}, {"context.order id.x"}),
        ("context.tags[0]", {"context"}, {"context.tags"}),
        ("true and 1 < 2", set(), set()),
        ("default(slots.a, slots.b)", {"slots"}, {"slots.a", "slots.b"}),
        ("lower(text).x", {"text"}, {"text"}),
    ],
)
def test_names_and_paths(source: str, names: set[str], paths: set[str]) -> None:
    expression = compile_expression(source)
    assert expression.names == names
    assert expression.paths == paths
    assert expression.source == source


def test_expressions_are_values() -> None:
    a, b = compile_expression("turn > 1"), compile_expression("turn > 1")
    assert a == b and hash(a) == hash(b) and {a, b} == {a}
    assert a != compile_expression("turn > 2")
    assert repr(a) == "Expression('turn > 1')"
    assert isinstance(a, Expression)


def test_evaluation_does_not_mutate_the_scope() -> None:
    scope: dict[str, Any] = {"context": {"tags": ["a"]}}
    compile_expression("context.tags + ['b'] and len(context.tags) and context.x").evaluate(scope)
    assert scope == {"context": {"tags": ["a"]}}


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, ""), (True, "yes"), (False, "no"), (3, "3"), (2.0, "2"), (0.1 + 0.2, "0.3"), (19.99, "19.99"),
     (-0.0, "0"), (1e20, "1e+20"), (float("inf"), "inf"), ([1, "a", None], "1, a, "), ({"a": 1, "b": [2, 3]},
     "a: 1, b: 2, 3"), ({"b", "a"}, "a, b"), (b"caf\xc3\xa9", "café"), ("text", "text")],
)
def test_to_text(value: Any, text: str) -> None:
    assert to_text(value) == text


def test_to_text_never_recurses_forever() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert to_text(loop).endswith("…")


# -- properties ---------------------------------------------------------------------------------------------------
TOKENS = [
    "context", "slots", "x", ".", "a", "__class__", "__import__", "(", ")", "[", "]", "{", "}", ",", ":", "'s'",
    '"t"', "1", "2.5", "-", "+", "*", "/", "%", "**", "//", "==", "!=", "<", ">=", " in ", " not ", " and ", " or ",
    " is ", "none", "true", "null", "len", "matches", "round", "default", "lambda", ":=", " for ", " if ",
    " else ", "#", "\\", "'", '"', "f'", "\n", "@", "$", "`", "é", "yield", "await", "0x1", "1e999", "1_0",
]


@given(st.text(max_size=300))
def test_arbitrary_text_compiles_or_raises_expression_error(source: str) -> None:
    _compile_or_error(source)


@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_token_soup_compiles_or_raises_expression_error(source: str) -> None:
    _compile_or_error(source)


def _compile_or_error(source: str) -> None:
    try:
        expression = compile_expression(source)
    except EvaluationError:
        raise AssertionError("compiling never evaluates") from None
    except ExpressionError as exc:
        assert exc.column is None or exc.column >= 1
        return
    with contextlib.suppress(EvaluationError):
        expression.evaluate(SCOPE)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from("abcxyz"), children,
                                                                       max_size=4),
    max_leaves=12,
)
SCOPES = st.dictionaries(st.sampled_from(["context", "slots", "x", "text"]), JSON, max_size=4)


def _expressions() -> st.SearchStrategy[str]:
    path = st.builds(lambda root, keys: root + "".join(keys), st.sampled_from(["context", "slots", "x", "text"]),
                     st.lists(st.sampled_from([".a", ".b", ".x", "[0]", "[-1]", "['y']", "[3]"]), max_size=3))
    literal = st.one_of(st.integers(-3, 3).map(str), st.sampled_from(["0.5", "'a'", "''", "'1'", "none", "true",
                                                                        "false", "[]", "[1, 'a']", "'^a'"]))
    leaf = path | literal

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.builds(lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(
            ["+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "in", "not in", "and", "or"]), inner)
        unary = st.builds(lambda op, a: f"({op} {a})", st.sampled_from(["not", "-", "+"]), inner)
        one = st.builds(lambda f, a: f"{f}({a})", st.sampled_from(
            ["len", "lower", "upper", "strip", "int", "float", "str", "round"]), inner)
        two = st.builds(lambda f, a, b: f"{f}({a}, {b})", st.sampled_from(
            ["matches", "contains", "startswith", "endswith", "default", "round"]), inner, inner)
        listed = st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]")
        return binary | unary | one | two | listed

    return st.recursive(leaf, extend, max_leaves=8)


@given(_expressions(), SCOPES)
def test_evaluation_over_json_scopes_raises_only_evaluation_errors(source: str, scope: dict[str, Any]) -> None:
    try:
        expression = compile_expression(source)
    except ExpressionError as exc:
        assert any(part in str(exc) for part in ("nested too deeply", "regular expression", "pattern as text")), exc
        return
    try:
        first = expression.evaluate(scope)
    except EvaluationError as exc:
        assert source in str(exc)
        return
    assert repr(expression.evaluate(scope)) == repr(first)  # deterministic
    truthy(first)
    to_text(first)


@given(SCOPES)
def test_scope_paths_read_what_the_scope_holds(scope: dict[str, Any]) -> None:
    for root, value in scope.items():
        assert repr(compile_expression(root).evaluate(scope)) == repr(value)  # repr: NaN is not equal to itself
        if isinstance(value, dict):
            for key, item in value.items():
                got = compile_expression(f"{root}.{key}").evaluate(scope)
                assert got is item
