"""The small, safe expression language of policy conditions (`if:`) and template placeholders.

Policies are data written by people who are not the engine's authors, so an expression must never run Python:
the source is parsed with `ast.parse(mode="eval")` and only a whitelist of node types is turned into closures we
interpret ourselves (no `eval`, `exec`, `compile` or `getattr`). Attribute access only looks keys up in mappings,
so `context.__class__` has nothing to reach, and dunder names are refused anyway.

Run-time semantics favour answering over failing, because a policy is often checked before its data exists:
missing names and keys are `None`, ordering comparisons between unrelated types (`None < 3`) are `False`, arithmetic
on non-numbers is `None`. Only a question with no sensible answer (`1 / 0`, `int("abc")`) raises `EvaluationError`.
"""

from __future__ import annotations

import ast
import difflib
import io
import math
import operator
import re
import tokenize
import warnings
from collections.abc import Callable, Collection, Mapping, Set
from functools import lru_cache
from typing import Any, Final, NoReturn

from agents.dialogue.errors import EvaluationError, ExpressionError

__all__ = ["FUNCTIONS", "MAX_DEPTH", "MAX_LENGTH", "Expression", "compile_expression", "to_text", "truthy"]

#: Longest accepted source: longer logic belongs in a workflow, not in a condition.
MAX_LENGTH: Final = 1000
#: Deepest accepted syntax tree; also bounds the interpreter's recursion.
MAX_DEPTH: Final = 32

#: Literal names YAML authors reach for, on top of Python's True/False/None.
CONSTANTS: Final[Mapping[str, Any]] = {"true": True, "false": False, "null": None, "none": None}

#: Callable functions and how many arguments each takes (min, max).
FUNCTIONS: Final[Mapping[str, tuple[int, int]]] = {
    "len": (1, 1), "lower": (1, 1), "upper": (1, 1), "strip": (1, 1), "int": (1, 1), "float": (1, 1),
    "str": (1, 1), "matches": (2, 2), "contains": (2, 2), "startswith": (2, 2), "endswith": (2, 2),
    "default": (2, 2), "round": (1, 2), "get": (2, 2),
}

_Run = Callable[[Mapping[str, Any]], Any]

_CONSTRUCTS: Final[Mapping[type[ast.AST], str]] = {
    ast.Lambda: "lambda", ast.ListComp: "comprehensions", ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions", ast.GeneratorExp: "generator expressions",
    ast.NamedExpr: "assignment expressions (:=)", ast.JoinedStr: "f-strings", ast.FormattedValue: "f-strings",
    ast.IfExp: "conditional expressions (x if c else y)", ast.Dict: "dict literals", ast.Set: "set literals",
    ast.Starred: "starred arguments (*x)", ast.Slice: "slices", ast.Await: "await", ast.Yield: "yield",
    ast.YieldFrom: "yield",
}
_BINARY: Final[Mapping[type[ast.operator], str]] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Mod: "%",
}
_ORDER: Final[Mapping[type[ast.cmpop], Callable[[Any, Any], bool]]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
}


class Expression:
    """A compiled expression: immutable, hashable by its source, safe to evaluate against any scope."""

    __slots__ = ("_run", "names", "paths", "source")

    def __init__(self, source: str, run: _Run, names: frozenset[str], paths: frozenset[str]) -> None:
        self.source = source
        #: Root names it reads (`context`, `slots`, ...).
        self.names = names
        #: Dotted paths it reads (`slots.order_id`): how the loader finds slots that are read but never asked.
        self.paths = paths
        self._run = run

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        """The value in `scope`; raises only `EvaluationError` (with the source in its message)."""
        try:
            return self._run(scope)
        except EvaluationError:
            raise
        except (ArithmeticError, ValueError, TypeError, RecursionError) as exc:  # a safety net: never escape raw
            raise EvaluationError(f"cannot evaluate `{self.source}`: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def compile_expression(source: str, *, names: Collection[str] | None = None) -> Expression:
    """Parse and check `source`; with `names`, any other root name is an error now rather than `None` later."""
    if not isinstance(source, str):
        raise ExpressionError(f"an expression must be text, not {type(source).__name__}: quote it in the policy")
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"the expression is {len(source)} characters long; the limit is {MAX_LENGTH}")
    return _Compiler(source, None if names is None else frozenset(names)).compile()


def truthy(value: Any) -> bool:
    """Policy truth: None, false, 0, NaN and empty text or collections are false; never calls foreign `__bool__`."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0 and not (isinstance(value, float) and math.isnan(value))
    if isinstance(value, str | bytes | list | tuple | Mapping | Set):
        return len(value) > 0
    return True


def to_text(value: Any) -> str:
    """How a value reads in a reply (and what `str()` returns): None is empty, booleans yes/no, lists joined."""
    return _text(value, 0)


def _text(value: Any, depth: int) -> str:
    if depth > MAX_DEPTH:
        return "…"
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # beyond Python's int-to-text digit limit
            return "…"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return format(value, ".15g")  # 0.1 + 0.2 reads "0.3"
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return ", ".join(f"{_text(k, depth + 1)}: {_text(v, depth + 1)}" for k, v in value.items())
    if isinstance(value, Set):
        return ", ".join(sorted(_text(item, depth + 1) for item in value))  # sorted: sets have no stable order
    if isinstance(value, list | tuple):
        return ", ".join(_text(item, depth + 1) for item in value)
    try:
        return str(value)
    except Exception:  # a foreign object's __str__ must not break a reply
        return f"<{type(value).__name__}>"


# -- compiling ---------------------------------------------------------------------------------------------------
class _Problem(Exception):
    """Raised by run-time helpers; the call site turns it into an `EvaluationError` that names the expression."""


class _Compiler:
    def __init__(self, source: str, allowed: frozenset[str] | None) -> None:
        self.source = source
        self.allowed = allowed
        # One line, same character offsets: YAML folds long conditions over lines, which Python's parser refuses.
        flat = source.replace("\r", " ").replace("\n", " ")
        self.body = flat.lstrip()
        self.lead = len(flat) - len(self.body)
        self.names: set[str] = set()
        self.paths: set[str] = set()

    def compile(self) -> Expression:
        if not self.body.strip():
            raise ExpressionError("the expression is empty")
        tree = self._parse()
        self._refuse_comments()
        run = self._node(tree.body, 1)
        return Expression(self.source, run, frozenset(self.names), frozenset(self.paths))

    def _parse(self) -> ast.Expression:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "\d" in a regex literal is meant literally, not a warning
                return ast.parse(self.body, mode="eval")
        except SyntaxError as exc:
            offset = None if not exc.offset else self.lead + min(max(exc.offset - 1, 0), len(self.body))
            raise self._error(_syntax_message(exc.msg, self.body), offset) from None
        except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
            raise self._error(f"invalid expression: {exc}", None) from None

    def _refuse_comments(self) -> None:
        try:
            for token in tokenize.generate_tokens(io.StringIO(self.body).readline):
                if token.type == tokenize.COMMENT:
                    offset = self.lead + token.start[1]
                    raise self._error("'#' starts a comment, which is not allowed: quote it if it is text", offset)
        except (tokenize.TokenError, SyntaxError):  # parsed already, so only odd trailing input lands here
            return

    # -- errors ----------------------------------------------------------------------------------------------
    def _error(self, message: str, offset: int | None) -> ExpressionError:
        if offset is None:
            return ExpressionError(message)
        line = self.source.count("\n", 0, offset) + 1
        column = offset - (self.source.rfind("\n", 0, offset) + 1) + 1
        return ExpressionError(message, line=line, column=column)

    def _offset(self, node: ast.AST, *, end: bool = False) -> int:
        """Character offset of `node` in the source (ast counts UTF-8 bytes on the one line we parsed)."""
        byte = getattr(node, "end_col_offset" if end else "col_offset", 0) or 0
        return self.lead + len(self.body.encode()[:byte].decode("utf-8", errors="ignore"))

    def _refuse(self, node: ast.AST, message: str) -> NoReturn:
        raise self._error(message, self._offset(node))

    def _runtime(self, node: ast.AST, message: str) -> EvaluationError:
        offset = self._offset(node)
        return EvaluationError(f"{message} in `{self.source}`", column=offset + 1)

    # -- nodes -----------------------------------------------------------------------------------------------
    def _node(self, node: ast.expr, depth: int) -> _Run:
        if depth > MAX_DEPTH:
            self._refuse(node, f"the expression is nested too deeply (more than {MAX_DEPTH} levels): split it up")
        match node:
            case ast.Constant():
                return self._constant(node)
            case ast.Name():
                return self._name(node)
            case ast.Attribute() | ast.Subscript():
                return self._chain(node, depth)
            case ast.BoolOp():
                return self._bool(node, depth)
            case ast.UnaryOp():
                return self._unary(node, depth)
            case ast.BinOp():
                return self._binary(node, depth)
            case ast.Compare():
                return self._compare(node, depth)
            case ast.Call():
                return self._call(node, depth)
            case ast.List() | ast.Tuple():
                items = [self._node(item, depth + 1) for item in node.elts]
                return lambda scope: [item(scope) for item in items]
        construct = _CONSTRUCTS.get(type(node), type(node).__name__)
        self._refuse(node, f"{construct} not allowed in policy expressions")

    def _constant(self, node: ast.Constant) -> _Run:
        value = node.value
        if value is not None and not isinstance(value, str | int | float):
            self._refuse(node, f"{type(value).__name__} literals are not allowed: use text, numbers, true/false/none")
        return lambda _scope: value

    def _name(self, node: ast.Name) -> _Run:
        name = node.id
        if name in CONSTANTS:
            value = CONSTANTS[name]
            return lambda _scope: value
        self._root(node)
        self.paths.add(name)
        return lambda scope: scope.get(name)

    def _root(self, node: ast.Name) -> str:
        name = node.id
        if name.startswith("__"):
            self._refuse(node, f"names starting with '__' are not allowed (found '{name}')")
        if self.allowed is not None and name not in self.allowed:
            hint = difflib.get_close_matches(name, sorted(self.allowed), n=1)
            guess = f"; did you mean '{hint[0]}'?" if hint else ""
            known = ", ".join(sorted(self.allowed))
            self._refuse(node, f"unknown name '{name}'{guess} Expressions may use: {known}")
        self.names.add(name)
        return name

    def _chain(self, node: ast.Attribute | ast.Subscript, depth: int) -> _Run:
        """`a.b["c"][0]`: keys looked up in mappings (and indexes in lists); anything missing is None."""
        keys: list[str | int] = []
        current: ast.expr = node
        while isinstance(current, ast.Attribute | ast.Subscript):
            keys.append(self._key(current))
            current = current.value
            depth += 1
            if depth > MAX_DEPTH:
                self._refuse(current, f"the expression is nested too deeply (more than {MAX_DEPTH} levels)")
        keys.reverse()
        base: _Run
        if isinstance(current, ast.Name) and current.id not in CONSTANTS:
            root = self._root(current)
            path = [root]
            for key in keys:
                if not isinstance(key, str):
                    break  # `history[0].text` reads `history`; positions are not slot names
                path.append(key)
            self.paths.add(".".join(path))
            base = lambda scope: scope.get(root)  # noqa: E731 - a closure is the compiled form
        else:
            base = self._node(current, depth)
        path_keys = tuple(keys)

        def run(scope: Mapping[str, Any]) -> Any:
            value = base(scope)
            for key in path_keys:
                value = _lookup(value, key)
            return value

        return run

    def _key(self, node: ast.Attribute | ast.Subscript) -> str | int:
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("__"):
                where = self._offset(node, end=True) - len(node.attr)  # point at the name, not at what precedes it
                raise self._error(f"attributes starting with '__' are not allowed (found '{node.attr}')", where)
            return node.attr
        index = node.slice
        negative = isinstance(index, ast.UnaryOp) and isinstance(index.op, ast.USub)
        if negative:
            assert isinstance(index, ast.UnaryOp)
            index = index.operand
        if isinstance(index, ast.Constant) and isinstance(index.value, int) and not isinstance(index.value, bool):
            return -index.value if negative else index.value
        if not negative and isinstance(index, ast.Constant) and isinstance(index.value, str):
            if index.value.startswith("__"):
                self._refuse(index, f"keys starting with '__' are not allowed (found '{index.value}')")
            return index.value
        self._refuse(index, "an index must be a literal text key or whole number, e.g. slots[\"order id\"] or x[0]")

    def _bool(self, node: ast.BoolOp, depth: int) -> _Run:
        parts = [self._node(value, depth + 1) for value in node.values]
        is_and = isinstance(node.op, ast.And)

        def run(scope: Mapping[str, Any]) -> Any:
            value: Any = None
            for part in parts:  # short-circuits and returns the deciding value, like Python
                value = part(scope)
                if truthy(value) != is_and:
                    return value
            return value

        return run

    def _unary(self, node: ast.UnaryOp, depth: int) -> _Run:
        operand = self._node(node.operand, depth + 1)
        if isinstance(node.op, ast.Not):
            return lambda scope: not truthy(operand(scope))
        if isinstance(node.op, ast.USub):
            return lambda scope: _negate(operand(scope))
        if isinstance(node.op, ast.UAdd):
            return lambda scope: _plus(operand(scope))
        self._refuse(node, "the operator ~ is not allowed: use not, -, + - * / % and comparisons")

    def _binary(self, node: ast.BinOp, depth: int) -> _Run:
        symbol = _BINARY.get(type(node.op))
        if symbol is None:
            self._refuse(node, "only the arithmetic operators + - * / % are allowed (use and/or/not for logic)")
        left = self._node(node.left, depth + 1)
        right = self._node(node.right, depth + 1)

        def run(scope: Mapping[str, Any]) -> Any:
            try:
                return _arithmetic(symbol, left(scope), right(scope))
            except _Problem as exc:
                raise self._runtime(node, str(exc)) from None

        return run

    def _compare(self, node: ast.Compare, depth: int) -> _Run:
        tests: list[Callable[[Any, Any], bool]] = []
        for op in node.ops:
            if isinstance(op, ast.Is | ast.IsNot):
                self._refuse(node, "'is' is not allowed: compare with == none or != none")
            tests.append(_comparison(op))
        left = self._node(node.left, depth + 1)
        rights = [self._node(right, depth + 1) for right in node.comparators]
        pairs = list(zip(tests, rights, strict=True))

        def run(scope: Mapping[str, Any]) -> bool:
            value = left(scope)
            for test, right in pairs:
                other = right(scope)
                if not test(value, other):
                    return False
                value = other
            return True

        return run

    def _call(self, node: ast.Call, depth: int) -> _Run:
        allowed = ", ".join(FUNCTIONS)
        if isinstance(node.func, ast.Attribute):
            self._refuse(node, f"method calls are not allowed: use a function, e.g. lower(x) ({allowed})")
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            found = f" (found {node.func.id}())" if isinstance(node.func, ast.Name) else ""
            self._refuse(node, f"function calls other than {allowed} are not allowed{found}")
        name = node.func.id
        if node.keywords:
            self._refuse(node.keywords[0], f"{name}() takes no keyword arguments")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self._refuse(arg, "starred arguments (*x) are not allowed")
        least, most = FUNCTIONS[name]
        if not least <= len(node.args) <= most:
            wanted = str(least) if least == most else f"{least} or {most}"
            self._refuse(node, f"{name}() takes {wanted} argument{'s' if most > 1 else ''}, not {len(node.args)}")
        if name == "matches":
            self._check_pattern(node.args[1])
        args = [self._node(arg, depth + 1) for arg in node.args]
        function = _IMPLEMENTATIONS[name]

        def run(scope: Mapping[str, Any]) -> Any:
            try:
                return function(*(arg(scope) for arg in args))
            except _Problem as exc:
                raise self._runtime(node, f"{name}(): {exc}") from None

        return run

    def _check_pattern(self, node: ast.expr) -> None:
        """A literal regex is compiled now, so a typo fails when the policy loads rather than mid-conversation."""
        if not isinstance(node, ast.Constant):
            return
        if not isinstance(node.value, str):
            self._refuse(node, "matches(text, pattern) needs the pattern as text, e.g. matches(text, \"^\\d+$\")")
        try:
            _regex(node.value)
        except (re.error, OverflowError, RecursionError) as exc:
            self._refuse(node, f"invalid regular expression {node.value!r}: {exc}")


def _syntax_message(message: str, body: str) -> str:
    if "&&" in body or "||" in body:
        return f"invalid expression ({message}): write and / or instead of && / ||"
    if re.search(r"!(?!=)", body):
        return f"invalid expression ({message}): write not instead of !"
    if "Maybe you meant '=='" in message or re.search(r"(?<![=!<>])=(?!=)", body):
        return f"invalid expression ({message}): write == to compare (= is not allowed)"
    return f"invalid expression: {message}"


# -- run-time semantics ------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _lookup(value: Any, key: str | int) -> Any:
    if isinstance(value, Mapping):
        try:
            return value.get(key)
        except TypeError:
            return None
    if isinstance(key, int) and isinstance(value, list | tuple | str):
        return value[key] if -len(value) <= key < len(value) else None
    return None  # attributes of anything else are not reachable: no getattr, ever


def _negate(value: Any) -> Any:
    return -value if _is_number(value) else None


def _plus(value: Any) -> Any:
    return value if _is_number(value) else None


def _arithmetic(symbol: str, left: Any, right: Any) -> Any:
    if symbol == "+" and isinstance(left, str) and isinstance(right, str):
        return left + right
    if not (_is_number(left) and _is_number(right)):
        return None  # `context.retries + 1` before retries is set: None, which compares False
    try:
        if symbol == "+":
            return left + right
        if symbol == "-":
            return left - right
        if symbol == "*":
            return left * right
        if symbol == "/":
            return left / right
        return left % right
    except ZeroDivisionError:
        raise _Problem("division by zero") from None
    except OverflowError:
        raise _Problem("number too large") from None


def _equal(left: Any, right: Any) -> bool:
    if isinstance(left, bool) != isinstance(right, bool):
        return False  # JSON's view: true is not 1
    try:
        return bool(left == right)
    except (TypeError, ValueError):
        return False


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    if isinstance(container, Mapping):
        try:
            return item in container
        except TypeError:
            return False
    if isinstance(container, list | tuple | Set):
        return any(_equal(item, element) for element in container)
    return False


def _comparison(op: ast.cmpop) -> Callable[[Any, Any], bool]:
    if isinstance(op, ast.Eq):
        return _equal
    if isinstance(op, ast.NotEq):
        return lambda left, right: not _equal(left, right)
    if isinstance(op, ast.In):
        return lambda left, right: _contains(right, left)
    if isinstance(op, ast.NotIn):
        return lambda left, right: not _contains(right, left)
    test = _ORDER[type(op)]

    def order(left: Any, right: Any) -> bool:
        if (_is_number(left) and _is_number(right)) or (isinstance(left, str) and isinstance(right, str)):
            return test(left, right)
        if isinstance(left, list | tuple) and isinstance(right, list | tuple):
            try:
                return bool(test(list(left), list(right)))
            except TypeError:  # [1] < ["a"]
                return False
        return False  # None < 3, "a" < 1: no order, so not true

    return order


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _as_text(value: Any) -> str | None:
    """Text functions accept text and numbers (read as their text); anything else has no text."""
    if isinstance(value, str):
        return value
    if _is_number(value):
        return to_text(value)
    return None


def _len(value: Any) -> int | None:
    if value is None:
        return 0
    if isinstance(value, str | list | tuple | Mapping | Set):
        return len(value)
    return None


def _text_function(method: Callable[[str], str]) -> Callable[[Any], str | None]:
    def function(value: Any) -> str | None:
        text = _as_text(value)
        return None if text is None else method(text)

    return function


def _int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    try:
        if isinstance(value, float):
            return int(value)
        if isinstance(value, int | str):
            return int(value)
    except (ValueError, OverflowError):
        raise _Problem(f"cannot read {to_text(value)[:40]!r} as a whole number") from None
    raise _Problem(f"cannot turn {type(value).__name__} into a whole number")


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, int | float | str):
            return float(value)
    except (ValueError, OverflowError):
        raise _Problem(f"cannot read {to_text(value)[:40]!r} as a number") from None
    raise _Problem(f"cannot turn {type(value).__name__} into a number")


def _matches(text: Any, pattern: Any) -> bool:
    subject = _as_text(text)
    if subject is None or not isinstance(pattern, str):
        return False
    try:
        compiled = _regex(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise _Problem(f"invalid regular expression {pattern!r}: {exc}") from None
    return compiled.search(subject) is not None


def _affix(method: Callable[[str, str], bool]) -> Callable[[Any, Any], bool]:
    def function(value: Any, affix: Any) -> bool:
        text, part = _as_text(value), _as_text(affix)
        return text is not None and part is not None and method(text, part)

    return function


def _default(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def _get(container: Any, key: Any) -> Any:
    """`get(iot.rooms, slots.room)`: a lookup whose key is computed (a subscript takes only literal keys)."""
    return _lookup(container, key) if isinstance(key, str | int) and not isinstance(key, bool) else None


def _round(value: Any, digits: Any = None) -> Any:
    if not _is_number(value):
        return None
    if digits is not None and (not _is_number(digits) or not float(digits).is_integer() or abs(digits) > 20):
        raise _Problem("the number of digits must be a whole number from -20 to 20")
    try:
        return round(value) if digits is None else round(value, int(digits))
    except (ValueError, OverflowError):
        raise _Problem(f"cannot round {to_text(value)}") from None


_IMPLEMENTATIONS: Final[Mapping[str, Callable[..., Any]]] = {
    "len": _len,
    "lower": _text_function(str.lower),
    "upper": _text_function(str.upper),
    "strip": _text_function(str.strip),
    "int": _int,
    "float": _float,
    "str": to_text,
    "matches": _matches,
    "contains": _contains,
    "startswith": _affix(str.startswith),
    "endswith": _affix(str.endswith),
    "default": _default,
    "round": _round,
    "get": _get,
}
