"""Policy files (YAML) into the immutable `Policy` model, reporting every problem of the file at once.

Why not `yaml.safe_load` plus a schema library: each problem must name its line, and an author fixing a policy wants
all of them in one run, not one per run. So the YAML is composed into position-keeping nodes, every part is checked
with problems collected (never raised), the cross-references (jumps, slots, intents, entities, topics) are checked
once the whole file is read, and only then is a `PolicyError` raised, listing them all. Format: docs/policies.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from agents.dialogue.errors import DialogueError, PolicyError, Problem
from agents.dialogue.expressions import Expression, compile_expression
from agents.dialogue.iot_section import check_rule_events, read_iot
from agents.dialogue.model import (
    ACTION_TYPES,
    SCOPE_NAMES,
    SPECIAL_TARGETS,
    Action,
    Answer,
    Append,
    CallWorkflow,
    ClearSlots,
    Delegate,
    Dialogue,
    EndSession,
    EntityDefinition,
    Fallback,
    Form,
    Goto,
    Handoff,
    Increment,
    IntentDefinition,
    IotSettings,
    Location,
    Node,
    Policy,
    PolicySettings,
    Publish,
    Reply,
    Route,
    SetContext,
    Slot,
    Transfer,
    Trigger,
    UnsetContext,
)
from agents.dialogue.templates import Template, compile_template
from topics import catalog
from topics.errors import TopicError

__all__ = ["POLICY_FILE", "PolicyError", "Problem", "check_policy", "discover_policies", "load_policy",
           "load_policy_text"]

POLICY_FILE = "policy.yaml"
#: The value schema a topic must have for a `publish` action to use it.
COMMAND_SCHEMA = "switchboard.agents.Command"
DEFAULT_FALLBACK_REPLY = "Sorry, I did not understand that. Could you rephrase?"
DEFAULT_HANDOFF_REASON = "the user asked for a person"
SHORT_FORM_NODE = "start"

_TOP_KEYS = ("agent", "description", "owner", "settings", "intents", "entities", "knowledge", "dialogues",
             "fallback", "iot")
_DIALOGUE_KEYS = ("id", "trigger", "interrupts", "actions", "nodes", "form", "listen", "next")
_NODE_KEYS = ("id", "actions", "form", "listen", "next")
_TRIGGER_KINDS = ("regex", "intent", "event", "request")
_TRIGGER_KEYS = (*_TRIGGER_KINDS, "min_confidence", "if")
_SLOT_KEYS = ("name", "ask", "entity", "pattern", "validate", "invalid", "max_attempts", "on_fail")
_FALLBACK_KEYS = ("actions", "limit", "on_limit")
_KNOWLEDGE_KEYS = ("id", "questions", "answer")
#: Keys of each action type besides `type` and `if`; the first tuple is required (an inner tuple: one of aliases).
_ACTION_KEYS: dict[str, tuple[tuple[str | tuple[str, ...], ...], tuple[str, ...]]] = {
    "reply": ((("content", "text"),), ()),
    "set_context": (("key", "value"), ()),
    "unset_context": (("key",), ()),
    "increment": (("key",), ("by",)),
    "append": (("key", "value"), ("max_items",)),
    "clear_slots": ((), ("slots",)),
    "goto": ((("target", "node"),), ()),
    "publish": (("topic", "target", "name"), ("args",)),
    "call_workflow": (("workflow", "save_as"), ("input", "on_error")),
    "handoff": ((), ("reason",)),
    "end": ((), ("content",)),
    "delegate": ((), ("to", "capability", "request", "input", "collect", "timeout", "save_as", "on_timeout")),
    "answer": ((), ("content", "data")),
    "transfer": (("to",), ("reason",)),
}
assert set(_ACTION_KEYS) == set(ACTION_TYPES), "every action type of the model needs its YAML keys here"
_FINAL_TYPES = ("call_workflow", "handoff", "end", "goto", "transfer")
_COLLECT = ("first", "all", "none")
DEFAULT_DELEGATION_TIMEOUT_S = 30.0
_SETTINGS_TEXT = ("timeout_reply", "waiting_reply", "error_reply", "handoff_reply", "handoff_taken_reply",
                  "handoff_released_reply")
_INLINE_FLAGS = re.compile(r"^\(\?[aiLmsux]+\)")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*")
_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NULL_TAG = "tag:yaml.org,2002:null"


# --- public API ---------------------------------------------------------------------------------------------------


def load_policy(path: Path | str) -> Policy:
    """The policy in file `path`; raises PolicyError listing every problem in it."""
    policy, problems = _load_path(Path(path))
    if problems or policy is None:
        raise PolicyError(problems)
    return policy


def load_policy_text(text: str, file: str = "<string>", agent: str | None = None) -> Policy:
    """The policy written in `text` (`file` names it in problems and locates a `knowledge:` file).

    The agent is the policy's `agent:`, else `agent`, else the name of the file's folder.
    """
    policy, problems = _load(text.encode("utf-8"), file, agent)
    if problems or policy is None:
        raise PolicyError(problems)
    return policy


def check_policy(path: Path | str) -> list[Problem]:
    """Every problem of the policy in file `path` (empty: it loads)."""
    return _load_path(Path(path))[1]


def discover_policies(root: Path) -> list[Path]:
    """Every `<agent>/policy.yaml` one level under `root`, sorted."""
    return sorted(path for path in Path(root).glob(f"*/{POLICY_FILE}") if path.is_file())


def policy_summary(policy: Policy) -> str:
    """One line for people: `agent X: N dialogues, M nodes`."""
    nodes = sum(len(dialogue.nodes) for dialogue in policy.dialogues)
    return f"agent {policy.agent}: {len(policy.dialogues)} dialogues, {nodes} nodes"


def _load_path(path: Path) -> tuple[Policy | None, list[Problem]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, [Problem(str(path), 0, f"cannot read the policy file ({exc.strerror or exc}); check the path")]
    return _load(data, str(path), None)


def _load(data: bytes, file: str, agent: str | None) -> tuple[Policy | None, list[Problem]]:
    reader = _Reader(file)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(file, 0, f"the file is not UTF-8 text ({exc}); save it as UTF-8")]
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (column {mark.column + 1})" if mark is not None else ""
        what = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        return None, [Problem(file, mark.line + 1 if mark else 0, f"YAML syntax error{where}: {what}")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, 0, f"YAML syntax error: {exc}")]
    if root is None:
        return None, [Problem(file, 1, "the policy file is empty; it needs at least `dialogues:` (see "
                                       "docs/policies.md)")]
    policy = _PolicyBuilder(reader, data, agent).build(root)
    problems = sorted(reader.problems, key=lambda p: p.line)
    return (None if problems else policy), problems


# --- reading YAML nodes -------------------------------------------------------------------------------------------


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _listing(names: Iterable[str]) -> str:
    items = sorted(set(names))
    return ", ".join(items) if items else "(none)"


class _Reader:
    """Typed access to YAML nodes that records a problem (and returns None) instead of raising."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self._constructor = yaml.constructor.SafeConstructor()

    def at(self, node: yaml.Node) -> Location:
        return Location(self.file, _line(node))

    def problem(self, where: yaml.Node | int, message: str) -> None:
        line = where if isinstance(where, int) else _line(where)
        self.problems.append(Problem(self.file, line, message))

    def plain(self, node: yaml.Node) -> Any:
        """The node as plain Python data (YAML's own typing: `true` is a bool, `3` an int)."""
        return self._constructor.construct_object(node, deep=True)

    def describe(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        value = self.plain(node)
        if value is None:
            return "empty"
        if isinstance(value, bool | int | float):
            return f"{str(value).lower() if isinstance(value, bool) else value}"
        return f"the text {value!r}"

    def mapping(self, node: yaml.Node, what: str, allowed: Sequence[str],
                required: Sequence[str] = ()) -> dict[str, yaml.Node] | None:
        """The mapping's keys to value nodes; unknown, repeated and missing keys are problems."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must be a mapping with keys {', '.join(allowed)}; it is {self.describe(node)}")
            return None
        result: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.problem(key_node, f"{what}: a key must be a name, not {self.describe(key_node)}")
            elif key in result:
                self.problem(key_node, f"{what}: key {key!r} is given twice; keep one")
            elif key not in allowed:
                self.problem(key_node, f"{what}: unknown key {key!r}; allowed keys: {', '.join(allowed)}")
            else:
                result[key] = value_node
        for key in required:
            if key not in result:
                self.problem(node, f"{what} needs key {key!r}")
        return result

    def pairs(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """A name -> value mapping (intents, entities): (name, key node, value node), repeated names reported."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must be a mapping of names; it is {self.describe(node)}")
            return []
        seen: dict[str, int] = {}
        result = []
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(name, str) or not name:
                self.problem(key_node, f"{what}: a name must be text, not {self.describe(key_node)}")
            elif name in seen:
                self.problem(key_node, f"{what}: {name!r} is defined twice (first on line {seen[name]}); keep one")
            else:
                seen[name] = _line(key_node)
                result.append((name, key_node, value_node))
        return result

    def sequence(self, node: yaml.Node, what: str, *, allow_empty: bool = False) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, f"{what} must be a list (items starting with `- `); it is {self.describe(node)}")
            return []
        if not node.value and not allow_empty:
            self.problem(node, f"{what} is an empty list; give at least one item or remove the key")
        return list(node.value)

    def text(self, node: yaml.Node, what: str) -> str | None:
        """A scalar as written (so `intent: yes` is the text "yes", not YAML's boolean)."""
        if isinstance(node, yaml.ScalarNode) and node.tag != _NULL_TAG:
            return str(node.value)
        self.problem(node, f"{what} must be text; it is {self.describe(node)}")
        return None

    def name(self, node: yaml.Node, what: str) -> str | None:
        value = self.text(node, what)
        if value is not None and not _NAME.fullmatch(value):
            self.problem(node, f"{what} {value!r} must be a name: letters, digits, '_' or '-', not starting "
                               "with a digit")
            return None
        return value

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        value = self.plain(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, bool):
            return value
        self.problem(node, f"{what} must be true or false; it is {self.describe(node)}")
        return None

    def number(self, node: yaml.Node, what: str, *, minimum: float | None = None, maximum: float | None = None,
               integer: bool = False) -> float | None:
        value = self.plain(node) if isinstance(node, yaml.ScalarNode) else None
        kind = "a whole number" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
            self.problem(node, f"{what} must be {kind}; it is {self.describe(node)}")
            return None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"at least {minimum:g}" if maximum is None else f"between {minimum:g} and {maximum:g}"
            self.problem(node, f"{what} must be {bounds}; it is {value}")
            return None
        return value

    def regex(self, node: yaml.Node, what: str, flags: int = 0, *, words: bool = False) -> re.Pattern[str] | None:
        """Compile a regex; with `words`, it matches whole words only (`hi` does not fire on "this").

        Word edges are ASCII letters, digits and `_`: scripts written without spaces (Chinese, Japanese) match
        anywhere, as their users expect.
        """
        source = self.text(node, what)
        if source is None:
            return None
        compiled = source
        if words:
            leading = _INLINE_FLAGS.match(source)
            head = leading.group(0) if leading else ""
            compiled = f"{head}(?<![A-Za-z0-9_])(?:{source[len(head):]})(?![A-Za-z0-9_])"
        try:
            re.compile(source, flags)
            return re.compile(compiled, flags)
        except re.error as exc:
            column = f" at position {exc.pos + 1}" if exc.pos is not None else ""
            self.problem(node, f"{what}: bad regular expression {source!r}: {exc.msg}{column}")
            return None


# --- building the model -------------------------------------------------------------------------------------------


@dataclass
class _Jump:
    """A reference to a node, checked once every dialogue is read."""

    line: int
    origin: tuple[str, str] | None  # (dialogue, node) it leaves from; None: the fallback
    target: str
    what: str


@dataclass
class _Declared:
    """A dialogue's id, triggers and node ids as written, even when parts of it are broken, so that one broken
    dialogue does not make every jump to it a second problem."""

    line: int
    triggered: bool
    nodes: dict[str, int]  # node id -> line; the first is the entry


@dataclass
class _Uses:
    """Names a policy refers to, checked against what it defines once everything is read."""

    jumps: list[_Jump]
    slots: list[tuple[int, str]]  # slots read by expressions, templates and clear_slots
    asked: set[str]  # slots some form asks
    intents: list[tuple[int, str]]
    entities: list[tuple[int, str]]


class _PolicyBuilder:
    def __init__(self, reader: _Reader, data: bytes, agent: str | None) -> None:
        self.r = reader
        self.file = reader.file
        self.digest = hashlib.sha256(data)
        self.default_agent = agent
        self.uses = _Uses([], [], set(), [], [])
        self.declared: dict[str, _Declared] = {}
        self.origin: tuple[str, str] | None = None  # the node whose parts are being read

    # -- expressions and templates --

    def note_paths(self, line: int, paths: Iterable[Any]) -> None:
        for path in paths:
            parts = path.split(".") if isinstance(path, str) else list(path)
            if len(parts) >= 2 and parts[0] == "slots":
                self.uses.slots.append((line, str(parts[1])))

    def expression(self, node: yaml.Node, what: str) -> Expression | None:
        source = self.r.text(node, what)
        if source is None:
            return None
        try:
            expression = compile_expression(source, names=SCOPE_NAMES)
        except DialogueError as exc:
            self.r.problem(node, f"{what}: bad expression {source!r}: {exc}")
            return None
        self.note_paths(_line(node), expression.paths)
        return expression

    def template(self, node: yaml.Node, what: str) -> Template | None:
        source = self.r.text(node, what)
        return None if source is None else self.template_text(node, source, what)

    def template_text(self, node: yaml.Node, source: str, what: str) -> Template | None:
        try:
            template = compile_template(source, names=SCOPE_NAMES)
        except DialogueError as exc:
            self.r.problem(node, f"{what}: bad template {source!r}: {exc}")
            return None
        self.note_paths(_line(node), template.paths)
        return template

    def value(self, node: yaml.Node, what: str) -> Any:
        """Plain data whose strings are templates (rendered when the action runs): each string is checked here."""
        for leaf, path in _string_leaves(node, what):
            self.template_text(leaf, str(leaf.value), path)
        return self.r.plain(node)

    # -- the policy --

    def build(self, root: yaml.Node) -> Policy | None:
        r = self.r
        top = r.mapping(root, "the policy", _TOP_KEYS, required=("dialogues",))
        if top is None:
            return None
        agent = self.agent(top.get("agent"))
        about = {key: self.r.text(top[key], key) or "" for key in ("description", "owner") if key in top}
        settings = self.settings(top["settings"]) if "settings" in top else PolicySettings()
        intents = self.intents(top["intents"]) if "intents" in top else []
        entities = self.entities(top["entities"]) if "entities" in top else []
        dialogues = self.dialogues(top["dialogues"]) if "dialogues" in top else []
        if "knowledge" in top:
            more_intents, more_dialogues = self.knowledge(top["knowledge"])
            intents += more_intents
            dialogues += more_dialogues
        fallback = self.fallback(top.get("fallback"), root)
        iot = read_iot(self.r, top["iot"]) if "iot" in top else IotSettings()
        if iot is not None:
            check_rule_events(self.r, iot, dialogues)
        self.check_references(intents, entities)
        if agent is None or settings is None or fallback is None or iot is None:
            return None
        return Policy(agent=agent, file=self.file, dialogues=tuple(dialogues), fallback=fallback,
                      intents=tuple(intents), entities=tuple(entities), settings=settings, iot=iot,
                      version=self.digest.hexdigest()[:16], **about)

    def agent(self, node: yaml.Node | None) -> str | None:
        if node is not None:
            name = self.r.text(node, "agent")
        else:
            name = self.default_agent or Path(self.file).resolve().parent.name or "default"
        if name is None:
            return None
        try:
            catalog.agent_topics(name)
        except TopicError as exc:
            hint = "" if node is not None else " (taken from the policy's folder name; set `agent:` to choose one)"
            self.r.problem(node if node is not None else 1, f"{exc}{hint}")
            return None
        return name

    def settings(self, node: yaml.Node) -> PolicySettings | None:
        r = self.r
        names = [f.name for f in fields(PolicySettings)]
        allowed = ["session_timeout" if name == "session_timeout_s" else name for name in names]
        given = r.mapping(node, "settings", allowed)
        if given is None:
            return None
        values: dict[str, Any] = {}
        ok = True
        for written, value_node in given.items():
            key = "session_timeout_s" if written == "session_timeout" else written
            value: Any
            if key == "session_timeout_s":
                value = self.duration(value_node)
            elif key in ("history", "max_jumps"):
                value = r.number(value_node, f"settings: {key}", minimum=1, integer=True)
            elif key == "knowledge_min_score":
                value = r.number(value_node, f"settings: {key}", minimum=0, maximum=1)
            elif key == "timeout_reply" and value_node.tag == _NULL_TAG:
                values[key] = None
                continue
            else:
                text = r.text(value_node, f"settings: {key}")
                value = text if text is None else (text if self.template_text(value_node, text,
                                                                              f"settings: {key}") else None)
            if value is None:
                ok = False
            values[key] = value
        return PolicySettings(**values) if ok else None

    def duration(self, node: yaml.Node, what: str = "settings: session_timeout") -> float | None:
        value = self.r.plain(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        match = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if match is None or float(match.group(1)) <= 0:
            self.r.problem(node, f"{what} must be seconds or a duration like 45s, 30m or 2h; "
                                 f"it is {self.r.describe(node)}")
            return None
        return float(match.group(1)) * _UNITS[match.group(2)]

    def intents(self, node: yaml.Node) -> list[IntentDefinition]:
        result = []
        for name, key_node, value_node in self.r.pairs(node, "intents"):
            what = f"intent {name}"
            confidence: float | None = 0.9
            if isinstance(value_node, yaml.MappingNode):
                given = self.r.mapping(value_node, what, ("examples", "confidence"), required=("examples",)) or {}
                examples_node = given.get("examples")
                if "confidence" in given:
                    confidence = self.r.number(given["confidence"], f"{what}: confidence", minimum=0, maximum=1)
            else:
                examples_node = value_node
            examples = [] if examples_node is None else [
                self.r.regex(item, f"{what}: example", re.IGNORECASE, words=True)
                for item in self.r.sequence(examples_node, f"{what}: examples")]
            if examples and confidence is not None and all(e is not None for e in examples):
                result.append(IntentDefinition(self.r.at(key_node), name,
                                               tuple(e for e in examples if e is not None), confidence))
        return result

    def entities(self, node: yaml.Node) -> list[EntityDefinition]:
        result = []
        for name, key_node, value_node in self.r.pairs(node, "entities"):
            what = f"entity {name}"
            if isinstance(value_node, yaml.MappingNode):
                given = self.r.mapping(value_node, what, ("pattern",), required=("pattern",)) or {}
                pattern_node = given.get("pattern")
            else:
                pattern_node = value_node
            pattern = None if pattern_node is None else self.r.regex(pattern_node, f"{what}: pattern")
            if pattern is not None:
                result.append(EntityDefinition(self.r.at(key_node), name, pattern))
        return result

    def knowledge(self, node: yaml.Node) -> tuple[list[IntentDefinition], list[Dialogue]]:
        """`knowledge: FILE`: question/answer pairs, each an intent `faq_<id>` and a dialogue replying its answer."""
        name = self.r.text(node, "knowledge")
        if name is None:
            return [], []
        path = Path(self.file).parent / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.r.problem(node, f"knowledge: cannot read {str(path)!r} ({exc.strerror or exc}); the path is "
                                 "relative to the policy file")
            return [], []
        self.digest.update(data)
        outer, self.r = self.r, _Reader(str(path))
        try:
            try:
                root = yaml.compose(data.decode("utf-8"), Loader=yaml.SafeLoader)
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                mark = getattr(exc, "problem_mark", None)
                self.r.problem(mark.line + 1 if mark else 0, f"cannot read this knowledge file: {exc}")
                return [], []
            intents, dialogues = [], []
            for item in self.r.sequence(root, "a knowledge file") if root is not None else []:
                given = self.r.mapping(item, "knowledge entry", _KNOWLEDGE_KEYS, required=_KNOWLEDGE_KEYS)
                if given is None or len(given) != len(_KNOWLEDGE_KEYS):
                    continue
                entry_id = self.r.name(given["id"], "knowledge entry id")
                examples = [self.r.regex(q, "knowledge question", re.IGNORECASE, words=True)
                            for q in self.r.sequence(given["questions"], "questions")]
                answer = self.template(given["answer"], "knowledge answer")
                if entry_id is None or answer is None or not examples or None in examples:
                    continue
                at = self.r.at(item)
                intent = f"faq_{entry_id}"
                if intent in self.declared:
                    outer.problem(node, f"knowledge entry {entry_id!r} ({path}:{at.line}) makes dialogue {intent}, "
                                        "which the policy already has; rename one")
                    continue
                self.declared[intent] = _Declared(at.line, True, {SHORT_FORM_NODE: at.line})
                intents.append(IntentDefinition(at, intent, tuple(e for e in examples if e is not None)))
                dialogues.append(Dialogue(at, intent, (Trigger(at, intent=intent),),
                                          (Node(at, SHORT_FORM_NODE, (Reply(at, answer),)),)))
            return intents, dialogues
        finally:
            outer.problems += self.r.problems
            self.r = outer

    # -- dialogues --

    def dialogues(self, node: yaml.Node) -> list[Dialogue]:
        result: list[Dialogue] = []
        seen: dict[str, int] = {}
        for item in self.r.sequence(node, "dialogues"):
            dialogue = self.dialogue(item, seen)
            if dialogue is not None:
                result.append(dialogue)
        return result

    def dialogue(self, node: yaml.Node, seen: dict[str, int]) -> Dialogue | None:
        r = self.r
        given = r.mapping(node, "a dialogue", _DIALOGUE_KEYS, required=("id",))
        if given is None:
            return None
        dialogue_id = r.name(given["id"], "dialogue id") if "id" in given else None
        if dialogue_id is not None:
            if dialogue_id in SPECIAL_TARGETS:
                r.problem(given["id"], f"dialogue id {dialogue_id!r} is reserved for route targets; choose another")
            elif dialogue_id in seen:
                r.problem(given["id"], f"dialogue id {dialogue_id!r} is used twice (first on line "
                                       f"{seen[dialogue_id]}); dialogue ids must be unique")
            else:
                seen[dialogue_id] = _line(given["id"])
        what = f"dialogue {dialogue_id or '?'}"
        triggers = self.triggers(given["trigger"], what) if "trigger" in given else []
        interrupts = r.boolean(given["interrupts"], f"{what}: interrupts") if "interrupts" in given else False
        short_keys = [key for key in ("actions", "form", "listen", "next") if key in given]
        nodes: list[Node | None] = []
        node_ids: dict[str, int] = {}
        if dialogue_id is not None and dialogue_id not in self.declared:
            self.declared[dialogue_id] = _Declared(_line(node), "trigger" in given, {})
        if "nodes" in given:
            for key in short_keys:
                r.problem(given[key], f"{what} has both `nodes:` and `{key}:`; `actions:`/`form:`/`listen:`/`next:` "
                                      "at dialogue level are the one-node short form: move them into a node")
            nodes = [self.node(item, dialogue_id or "?", node_ids) for item in r.sequence(given["nodes"],
                                                                                          f"{what}: nodes")]
        elif short_keys:
            self.origin = (dialogue_id or "?", SHORT_FORM_NODE)
            node_ids[SHORT_FORM_NODE] = _line(node)
            nodes = [self.node_parts(given, node, SHORT_FORM_NODE, what)]
        else:
            r.problem(node, f"{what} needs `actions:` (a one-node dialogue) or `nodes:`")
        if dialogue_id is not None and self.declared[dialogue_id].line == _line(node):
            self.declared[dialogue_id].nodes = dict(node_ids)
        if dialogue_id is None or interrupts is None or None in triggers or not nodes or None in nodes:
            return None
        return Dialogue(r.at(node), dialogue_id, tuple(t for t in triggers if t is not None),
                        tuple(n for n in nodes if n is not None), interrupts)

    def node(self, node: yaml.Node, dialogue_id: str, seen: dict[str, int]) -> Node | None:
        r = self.r
        given = r.mapping(node, f"a node of dialogue {dialogue_id}", _NODE_KEYS, required=("id",))
        if given is None:
            return None
        node_id = r.name(given["id"], "node id") if "id" in given else None
        if node_id is not None:
            if node_id in SPECIAL_TARGETS:
                r.problem(given["id"], f"node id {node_id!r} is reserved for route targets; choose another")
                node_id = None
            elif node_id in seen:
                r.problem(given["id"], f"node id {node_id!r} is used twice in dialogue {dialogue_id} (first on line "
                                       f"{seen[node_id]}); node ids must be unique within a dialogue")
                node_id = None
            else:
                seen[node_id] = _line(given["id"])
        self.origin = (dialogue_id, node_id or "?")
        return self.node_parts(given, node, node_id, f"node {dialogue_id}.{node_id or '?'}")

    def node_parts(self, given: dict[str, yaml.Node], node: yaml.Node, node_id: str | None, what: str) -> Node | None:
        actions = self.actions(given["actions"], f"{what}: actions") if "actions" in given else ()
        form = self.form(given["form"], what) if "form" in given else None
        listen: list[Route | None] = []
        if "listen" in given:
            listen = [self.route(item, f"{what}: listen route", listen=True)
                      for item in self.r.sequence(given["listen"], f"{what}: listen")]
            if "next" in given:
                self.r.problem(given["next"], f"{what} has both `listen:` and `next:`; a listening node moves on by "
                                              "its listen routes (give the default one as `- goto: ...`)")
        nxt = self.next_routes(given["next"], what) if "next" in given else []
        if (node_id is None or actions is None or (form is None and "form" in given) or None in listen
                or None in nxt):
            return None
        return Node(self.r.at(node), node_id, actions, form, tuple(x for x in listen if x is not None),
                    tuple(x for x in nxt if x is not None))

    def triggers(self, node: yaml.Node, what: str) -> list[Trigger | None]:
        items = self.r.sequence(node, f"{what}: trigger") if isinstance(node, yaml.SequenceNode) else [node]
        return [self.trigger(item, f"{what}: trigger") for item in items]

    def trigger(self, node: yaml.Node, what: str, given: dict[str, yaml.Node] | None = None) -> Trigger | None:
        r = self.r
        if given is None and isinstance(node, yaml.ScalarNode):
            pattern = r.regex(node, what, re.IGNORECASE, words=True)
            return None if pattern is None else Trigger(r.at(node), pattern=pattern)
        if given is None:
            given = r.mapping(node, what, _TRIGGER_KEYS)
            if given is None:
                return None
        kinds = [kind for kind in _TRIGGER_KINDS if kind in given]
        if len(kinds) != 1:
            r.problem(node, f"{what} needs exactly one of regex, intent, event or request"
                            + (f"; it has {', '.join(kinds)}" if kinds else ""))
            return None
        kind = kinds[0]
        when = self.expression(given["if"], f"{what}: if") if "if" in given else None
        min_confidence: float | None = 0.0
        if "min_confidence" in given:
            if kind != "intent":
                r.problem(given["min_confidence"], f"{what}: min_confidence applies to intent triggers only")
            min_confidence = r.number(given["min_confidence"], f"{what}: min_confidence", minimum=0, maximum=1)
        at = r.at(node)
        if kind == "regex":
            pattern = r.regex(given["regex"], f"{what}: regex", re.IGNORECASE, words=True)
            ok = pattern is not None
            trigger = Trigger(at, pattern=pattern, when=when)
        elif kind == "intent":
            intent = r.text(given["intent"], f"{what}: intent")
            if intent is not None:
                self.uses.intents.append((_line(given["intent"]), intent))
            ok = intent is not None and min_confidence is not None
            trigger = Trigger(at, intent=intent, min_confidence=min_confidence or 0.0, when=when)
        elif kind == "request":
            request = r.name(given["request"], f"{what}: request")
            ok = request is not None
            trigger = Trigger(at, request=request, when=when)
        else:
            event = r.text(given["event"], f"{what}: event")
            ok = event is not None
            trigger = Trigger(at, event=event, when=when)
        if not ok or ("if" in given and when is None):
            return None
        return trigger

    def jump(self, node: yaml.Node, what: str) -> str | None:
        target = self.r.text(node, what)
        if target is not None:
            self.uses.jumps.append(_Jump(_line(node), self.origin, target, what))
        return target

    def route(self, node: yaml.Node, what: str, *, listen: bool = False) -> Route | None:
        r = self.r
        if isinstance(node, yaml.ScalarNode) and not listen:
            target = self.jump(node, what)
            return None if target is None else Route(r.at(node), target)
        keys = (*_TRIGGER_KEYS, "goto") if listen else ("goto", "if")
        given = r.mapping(node, what, keys, required=("goto",))
        if given is None:
            return None
        target = self.jump(given["goto"], f"{what}: goto") if "goto" in given else None
        when = self.expression(given["if"], f"{what}: if") if "if" in given else None
        trigger = None
        if any(kind in given for kind in _TRIGGER_KINDS):
            trigger_keys = {k: v for k, v in given.items() if k in (*_TRIGGER_KINDS, "min_confidence")}
            trigger = self.trigger(node, what, trigger_keys)
            if trigger is None:
                return None
        elif "min_confidence" in given:
            r.problem(given["min_confidence"], f"{what}: min_confidence needs an intent")
        if target is None or ("if" in given and when is None):
            return None
        return Route(r.at(node), target, when, trigger)

    def next_routes(self, node: yaml.Node, what: str) -> list[Route | None]:
        if isinstance(node, yaml.SequenceNode):
            return [self.route(item, f"{what}: next route") for item in self.r.sequence(node, f"{what}: next")]
        return [self.route(node, f"{what}: next")]

    # -- forms --

    def form(self, node: yaml.Node, what: str) -> Form | None:
        given = self.r.mapping(node, f"{what}: form", ("slots",), required=("slots",))
        if given is None or "slots" not in given:
            return None
        names: dict[str, int] = {}
        slots = [self.slot(item, what, names) for item in self.r.sequence(given["slots"], f"{what}: form slots")]
        if not slots or None in slots:
            return None
        return Form(self.r.at(node), tuple(s for s in slots if s is not None))

    def slot(self, node: yaml.Node, what: str, names: dict[str, int]) -> Slot | None:
        r = self.r
        given = r.mapping(node, f"{what}: a slot", _SLOT_KEYS, required=("name", "ask"))
        if given is None:
            return None
        name = r.name(given["name"], "slot name") if "name" in given else None
        if name is not None:
            if name in names:
                r.problem(given["name"], f"slot {name!r} is asked twice in this form (first on line {names[name]})")
                name = None
            else:
                names[name] = _line(given["name"])
                self.uses.asked.add(name)
        what = f"slot {name or '?'}"
        ask = self.template(given["ask"], f"{what}: ask") if "ask" in given else None
        entity = r.text(given["entity"], f"{what}: entity") if "entity" in given else None
        if entity is not None:
            self.uses.entities.append((_line(given["entity"]), entity))
        pattern = r.regex(given["pattern"], f"{what}: pattern") if "pattern" in given else None
        validate = self.expression(given["validate"], f"{what}: validate") if "validate" in given else None
        invalid = self.template(given["invalid"], f"{what}: invalid") if "invalid" in given else None
        attempts = r.number(given["max_attempts"], f"{what}: max_attempts", minimum=1, integer=True) \
            if "max_attempts" in given else 3
        on_fail = self.jump(given["on_fail"], f"{what}: on_fail") if "on_fail" in given else None
        parsed = {"entity": entity, "pattern": pattern, "validate": validate, "invalid": invalid,
                  "max_attempts": attempts, "on_fail": on_fail}
        if name is None or ask is None or any(parsed[key] is None for key in parsed if key in given):
            return None
        return Slot(r.at(node), name, ask, entity, pattern, validate, invalid, int(attempts or 3), on_fail)

    # -- actions --

    def actions(self, node: yaml.Node, what: str) -> tuple[Action, ...] | None:
        result: list[Action | None] = []
        final: tuple[str, int] | None = None
        for item in self.r.sequence(node, what):
            action, kind, conditional = self.action(item, what)
            if final is not None:
                self.r.problem(item, f"{what}: this action can never run: the {final[0]} action on line {final[1]} "
                                     "always leaves the node first; move it before that action or remove it")
                final = None  # one report per final action
            waits = isinstance(action, Delegate) and action.collect != "none"
            if (kind in _FINAL_TYPES or waits) and not conditional:
                final = (kind or "delegate", _line(item))
            result.append(action)
        if None in result:
            return None
        return tuple(a for a in result if a is not None)

    def action(self, node: yaml.Node, what: str) -> tuple[Action | None, str | None, bool]:
        """The action, its type (None if unknown), and whether it has a condition."""
        r = self.r
        if not isinstance(node, yaml.MappingNode):
            r.problem(node, f"{what}: an action must be a mapping with `type:`; it is {r.describe(node)}")
            return None, None, False
        type_node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "type"), None)
        kind = r.text(type_node, f"{what}: action type") if type_node is not None else None
        if type_node is None:
            r.problem(node, f"{what}: an action needs `type:`, one of {', '.join(ACTION_TYPES)}")
        if kind is None:
            return None, None, False
        if kind not in _ACTION_KEYS:
            r.problem(type_node or node, f"{what}: unknown action type {kind!r}; known types: "
                                         f"{', '.join(ACTION_TYPES)}")
            return None, None, False
        required, optional = _ACTION_KEYS[kind]
        flat_required = [k for k in required if isinstance(k, str)]
        allowed = ["type", "if", *(k for group in required for k in ((group,) if isinstance(group, str) else group)),
                   *optional]
        given = r.mapping(node, f"{what}: {kind} action", allowed, required=flat_required)
        if given is None:
            return None, kind, False
        for group in required:
            if isinstance(group, tuple):
                present = [k for k in group if k in given]
                if not present:
                    r.problem(node, f"{what}: {kind} action needs key {group[0]!r}")
                elif len(present) > 1:
                    r.problem(given[present[1]], f"{what}: {kind} action: {present[0]!r} and {present[1]!r} are "
                                                 "the same key; keep one")
                for key in present[:1]:
                    given[group[0]] = given[key]
        when = self.expression(given["if"], f"{what}: if") if "if" in given else None
        action = self.build_action(kind, given, r.at(node), when, f"{what}: {kind}")
        if "if" in given and when is None:
            action = None
        if any(k[0] not in given for k in required if isinstance(k, tuple)) or \
                any(k not in given for k in flat_required):
            action = None
        return action, kind, "if" in given

    def build_action(self, kind: str, f: dict[str, yaml.Node], at: Location, when: Expression | None,
                     what: str) -> Action | None:
        r = self.r
        key = r.text(f["key"], f"{what}: key") if "key" in f else None
        if kind == "reply":
            content = self.template(f["content"], f"{what}: content") if "content" in f else None
            return None if content is None else Reply(at, content, when)
        if kind == "set_context":
            value = self.value(f["value"], f"{what}: value") if "value" in f else None
            return None if key is None else SetContext(at, key, value, when)
        if kind == "unset_context":
            return None if key is None else UnsetContext(at, key, when)
        if kind == "increment":
            by = r.number(f["by"], f"{what}: by") if "by" in f else 1
            return None if key is None or by is None else Increment(at, key, by, when)
        if kind == "append":
            value = self.value(f["value"], f"{what}: value") if "value" in f else None
            max_items = r.number(f["max_items"], f"{what}: max_items", minimum=1, integer=True) \
                if "max_items" in f else None
            if key is None or ("max_items" in f and max_items is None):
                return None
            return Append(at, key, value, None if max_items is None else int(max_items), when)
        if kind == "clear_slots":
            names = [] if "slots" not in f else [r.text(item, f"{what}: slot") for item in
                                                 r.sequence(f["slots"], f"{what}: slots")]
            for item, name in zip(f["slots"].value if names else [], names, strict=False):
                if name is not None:
                    self.uses.slots.append((_line(item), name))
            return None if None in names else ClearSlots(at, tuple(n for n in names if n is not None), when)
        if kind == "goto":
            target = self.jump(f["target"], f"{what}: target")
            return None if target is None else Goto(at, target, when)
        if kind == "publish":
            return self.publish(f, at, when, what)
        if kind == "call_workflow":
            workflow = r.text(f["workflow"], f"{what}: workflow")
            save_as = r.text(f["save_as"], f"{what}: save_as")
            payload = self.value(f["input"], f"{what}: input") if "input" in f else {}
            on_error = self.jump(f["on_error"], f"{what}: on_error") if "on_error" in f else None
            if workflow is None or save_as is None or ("on_error" in f and on_error is None):
                return None
            return CallWorkflow(at, workflow, payload if payload is not None else {}, save_as, on_error, when)
        if kind == "delegate":
            return self.delegate(f, at, when, what)
        if kind == "answer":
            if not ({"content", "data"} & set(f)):
                r.problem(at.line, f"{what} needs `content:` (the answer's text), `data:` (its data) or both")
                return None
            content = self.template(f["content"], f"{what}: content") if "content" in f else None
            data = self.value(f["data"], f"{what}: data") if "data" in f else None
            return None if "content" in f and content is None else Answer(at, content, data, when)
        if kind == "transfer":
            to = self.agent_name(f["to"], f"{what}: to")
            reason = self.template(f["reason"], f"{what}: reason") if "reason" in f else None
            if to is None or ("reason" in f and reason is None):
                return None
            return Transfer(at, to, reason, when)
        if kind == "handoff":
            reason = self.template(f["reason"], f"{what}: reason") if "reason" in f else \
                compile_template(DEFAULT_HANDOFF_REASON)
            return None if reason is None else Handoff(at, reason, when)
        content = self.template(f["content"], f"{what}: content") if "content" in f else None
        return None if "content" in f and content is None else EndSession(at, content, when)

    def agent_name(self, node: yaml.Node, what: str) -> str | None:
        """An agent's name, as topics need it; whether that agent runs is only known at run time."""
        name = self.r.text(node, what)
        if name is None:
            return None
        try:
            catalog.agent_topics(name)
        except TopicError as exc:
            self.r.problem(node, f"{what}: {exc}")
            return None
        return name

    def delegate(self, f: dict[str, yaml.Node], at: Location, when: Expression | None, what: str) -> Delegate | None:
        """`delegate`: exactly one of `to:`/`capability:`; `save_as:` unless nothing is collected."""
        r = self.r
        ok = True
        targets = [key for key in ("to", "capability") if key in f]
        if len(targets) != 1:
            r.problem(at.line, f"{what} needs exactly one of `to:` (an agent) or `capability:` (every agent that "
                               "announces it)" + (f"; it has {' and '.join(targets)}" if targets else ""))
            ok = False
        to = self.agent_name(f["to"], f"{what}: to") if "to" in f else None
        capability = r.name(f["capability"], f"{what}: capability") if "capability" in f else None
        request = r.name(f["request"], f"{what}: request") if "request" in f else capability
        if "request" not in f and "to" in f:
            r.problem(at.line, f"{what} needs `request:`, the name the other agent's `{{request: NAME}}` trigger "
                               "answers")
        collect = r.text(f["collect"], f"{what}: collect") if "collect" in f else "first"
        if collect is not None and collect not in _COLLECT:
            r.problem(f["collect"], f"{what}: collect must be one of {', '.join(_COLLECT)}; it is {collect!r}")
            collect = None
        timeout = self.duration(f["timeout"], f"{what}: timeout") if "timeout" in f else DEFAULT_DELEGATION_TIMEOUT_S
        save_as = r.text(f["save_as"], f"{what}: save_as") if "save_as" in f else None
        if "save_as" not in f and collect != "none":
            r.problem(at.line, f"{what} needs `save_as:`, the context key for the answer (or `collect: none` for a "
                               "broadcast that waits for nothing)")
        on_timeout = self.jump(f["on_timeout"], f"{what}: on_timeout") if "on_timeout" in f else None
        if collect == "none":
            for key in ("on_timeout", "timeout"):
                if key in f:
                    r.problem(f[key], f"{what}: `{key}:` has no use with `collect: none`, which waits for nothing; "
                                      "remove it")
                    ok = False
        payload = self.value(f["input"], f"{what}: input") if "input" in f else {}
        parsed = {"to": to, "capability": capability, "request": request, "collect": collect, "timeout": timeout,
                  "save_as": save_as, "on_timeout": on_timeout}
        if not ok or request is None or collect is None or timeout is None \
                or any(parsed[key] is None for key in parsed if key in f):
            return None
        return Delegate(at, request, save_as or "", to, capability, payload if payload is not None else {},
                        collect, timeout, on_timeout, when)  # type: ignore[arg-type]

    def publish(self, f: dict[str, yaml.Node], at: Location, when: Expression | None, what: str) -> Publish | None:
        r = self.r
        topic = r.text(f["topic"], f"{what}: topic")
        if topic is not None:
            try:
                spec = catalog.get(topic)
            except TopicError:
                spec = None
            if spec is None or spec.value_schema != COMMAND_SCHEMA:
                valid = [s.name for s in catalog.ALL if s.value_schema == COMMAND_SCHEMA]
                why = "is not declared in topics/catalog.py" if spec is None else \
                    f"carries {spec.value_schema}, not commands ({COMMAND_SCHEMA})"
                r.problem(f["topic"], f"{what}: topic {topic!r} {why}; command topics: {_listing(valid)}")
                topic = None
        target = self.template(f["target"], f"{what}: target")
        name = r.text(f["name"], f"{what}: name")
        args = self.value(f["args"], f"{what}: args") if "args" in f else {}
        if topic is None or target is None or name is None:
            return None
        return Publish(at, topic, target, name, args if args is not None else {}, when)

    def fallback(self, node: yaml.Node | None, root: yaml.Node) -> Fallback | None:
        self.origin = None
        if node is None:
            return Fallback(self.r.at(root), (Reply(self.r.at(root), compile_template(DEFAULT_FALLBACK_REPLY)),))
        given = self.r.mapping(node, "fallback", _FALLBACK_KEYS)
        if given is None:
            return None
        at = self.r.at(node)
        actions = self.actions(given["actions"], "fallback: actions") if "actions" in given else \
            (Reply(at, compile_template(DEFAULT_FALLBACK_REPLY)),)
        limit = self.r.number(given["limit"], "fallback: limit", minimum=1, integer=True) if "limit" in given else 2
        on_limit = self.actions(given["on_limit"], "fallback: on_limit") if "on_limit" in given else ()
        if actions is None or limit is None or on_limit is None:
            return None
        return Fallback(at, actions, int(limit), on_limit)

    # -- cross-references --

    def check_references(self, intents: list[IntentDefinition], entities: list[EntityDefinition]) -> None:
        r = self.r
        edges: dict[tuple[str, str] | None, list[tuple[str, str]]] = {}
        for jump in self.uses.jumps:
            if jump.target in SPECIAL_TARGETS:
                continue
            here = jump.origin[0] if jump.origin else None
            resolved = _resolve(self.declared, here, jump.target)
            if resolved is not None:
                edges.setdefault(jump.origin, []).append(resolved)
                continue
            own = self.declared.get(here) if here else None
            nodes = f"nodes of dialogue {here}: {_listing(own.nodes)}; " if here and own else ""
            r.problem(jump.line, f"{jump.what}: jump to unknown node {jump.target!r}; {nodes}or a dialogue "
                                 f"({_listing(self.declared)}), dialogue.node, end or done")
        self.check_reachable(edges)
        for line, name in self.uses.slots:
            if name not in self.uses.asked:
                r.problem(line, f"slot {name!r} is used but no form asks it (asked slots: "
                                f"{_listing(self.uses.asked)}); add it to a form or fix the name")
        known_intents = {i.name for i in intents}
        if known_intents:
            for line, name in self.uses.intents:
                if name not in known_intents:
                    r.problem(line, f"intent {name!r} is not defined in `intents` ({_listing(known_intents)}); "
                                    "define it or fix the name")
        known_entities = {e.name for e in entities}
        if known_entities:
            for line, name in self.uses.entities:
                if name not in known_entities:
                    r.problem(line, f"entity {name!r} is not defined in `entities` ({_listing(known_entities)}); "
                                    "define it or fix the name")

    def check_reachable(self, edges: dict[tuple[str, str] | None, list[tuple[str, str]]]) -> None:
        """Nodes no route leads to can never run: almost always a misspelt jump."""
        declared = self.declared
        seen: set[tuple[str, str]] = set()
        todo = [(d, next(iter(info.nodes))) for d, info in declared.items() if info.triggered and info.nodes]
        todo += edges.get(None, [])
        while todo:
            key = todo.pop()
            if key not in seen:
                seen.add(key)
                todo += edges.get(key, [])
        for dialogue_id, info in declared.items():
            if not info.nodes:
                continue
            if (dialogue_id, next(iter(info.nodes))) not in seen:
                self.r.problem(info.line, f"dialogue {dialogue_id} has no trigger and no reachable jump leads to "
                                          "it; add a `trigger:` or a goto to it")
                continue
            for node_id, line in list(info.nodes.items())[1:]:
                if (dialogue_id, node_id) not in seen:
                    self.r.problem(line, f"node {dialogue_id}.{node_id} is unreachable: it is not the entry and no "
                                         "route, goto, on_fail or on_error of a reachable node leads to it")


def _resolve(declared: dict[str, _Declared], here: str | None, target: str) -> tuple[str, str] | None:
    """Where a jump lands, as the dialogue engine resolves it (`agents.dialogue.core`)."""
    own = declared.get(here) if here else None
    if here and own is not None and target in own.nodes:
        return here, target
    name, _, node_id = target.partition(".")
    other = declared.get(name)
    if other is None or not other.nodes:
        return None
    if not node_id:
        return name, next(iter(other.nodes))
    return (name, node_id) if node_id in other.nodes else None


def _string_leaves(node: yaml.Node, path: str) -> Iterator[tuple[yaml.ScalarNode, str]]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _string_leaves(value, f"{path}.{key.value}")
    elif isinstance(node, yaml.SequenceNode):
        for index, value in enumerate(node.value):
            yield from _string_leaves(value, f"{path}[{index}]")
    elif isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
        yield node, path
