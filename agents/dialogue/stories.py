"""Conversation tests ("stories"): YAML files of what a user says and what the agent must answer, run offline through
the pure core or against a running stack through the real bus.

Why both runners: offline a story takes milliseconds and needs no servers, so every policy change is checked at
once; on the bus the same story proves that the recogniser stage, the agent processor, the workflow runner and the
topics between them behave like the core. Format and semantics: docs/policies.md, "Conversation tests".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from agents.dialogue import core
from agents.dialogue.effects import (
    Effect,
    NotifyHandoff,
    RecordTransition,
    SendCommand,
    SendReply,
    SendTransfer,
    StartWorkflow,
)
from agents.dialogue.errors import DialogueError
from agents.dialogue.recognise import KeywordRecogniser
from topics.event import Event, derived_id

if TYPE_CHECKING:
    from agents.registry import AgentPackage
    from infra.config import Settings

STORIES_DIR = "stories"
DEFAULT_TIMEOUT_S = 20.0
#: Offline time: every story starts at BASE_TIME and each step happens STEP_SECONDS after the previous one.
BASE_TIME = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
STEP_SECONDS = 10
STORY_SOURCE = "/switchboard/stories"
#: A runaway policy (a workflow whose result starts another, forever) fails the step instead of hanging it.
MAX_WORKFLOW_ROUNDS = 20

_TOP_KEYS = ("agent", "stories")
_STORY_KEYS = ("name", "steps")
_INPUT_KEYS = ("user", "human", "event")
_STEP_KEYS = (*_INPUT_KEYS, "bot", "context", "state")
_HUMAN_ACTIONS = ("take", "reply", "release")
_NULL_TAG = "tag:yaml.org,2002:null"

StepKind = Literal["user", "human", "event"]


class StoryError(DialogueError):
    """A stories file cannot be read; `problems` are `file:line: what to do` lines, all of them at once."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("stories file problems:\n  " + "\n  ".join(self.problems))


# --- the format ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """One expected reply: the exact text, or a regular expression the whole text must match."""

    text: str | None = None
    pattern: re.Pattern[str] | None = None

    def matches(self, got: str) -> bool:
        if self.pattern is not None:
            return self.pattern.fullmatch(got) is not None
        return got == self.text

    def __str__(self) -> str:
        return f"matches /{self.pattern.pattern}/" if self.pattern is not None else json.dumps(self.text,
                                                                                                 ensure_ascii=False)


@dataclass(frozen=True)
class StoryStep:
    """One input to the session and what must hold after it.

    `signal` is the Signal kind for human and event steps (`human_take`, `human_reply`, `human_release`, `event`);
    `replies` is None when the step does not check replies; `context` is a subset the session context must contain.
    """

    file: str
    line: int
    kind: StepKind
    text: str | None = None
    signal: str | None = None
    name: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    replies: tuple[Expected, ...] | None = None
    context: Mapping[str, Any] | None = None
    state: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def describe(self) -> str:
        if self.kind == "user":
            return f"user: {self.text}"
        if self.kind == "event":
            return f"event {self.name} {json.dumps(dict(self.data), sort_keys=True, ensure_ascii=False)}"
        action = (self.signal or "").removeprefix("human_")
        said = f" {json.dumps(self.text, ensure_ascii=False)}" if self.text is not None else ""
        person = f" as {self.name}" if self.name and action != "take" else (f" {self.name}" if self.name else "")
        return f"human {action}{person}{said}"


@dataclass(frozen=True)
class Story:
    """A named conversation with one agent; `folder` is the agent folder the file sits in (its `stories/` parent)."""

    name: str
    agent: str
    file: str
    line: int
    steps: tuple[StoryStep, ...]
    folder: Path | None = None

    @property
    def id(self) -> str:
        return f"{self.agent}: {self.name}"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Parser:
    """Reads composed YAML nodes, collecting problems (with lines) instead of stopping at the first."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[tuple[int, str]] = []
        self._constructor = yaml.constructor.SafeConstructor()

    def problem(self, node: yaml.Node | int, message: str) -> None:
        self.problems.append((node if isinstance(node, int) else _line(node), message))

    def plain(self, node: yaml.Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def mapping(self, node: yaml.Node, what: str, allowed: Sequence[str]) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must be a mapping with keys {', '.join(allowed)}")
            return None
        result: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key not in allowed:
                self.problem(key_node, f"{what}: unknown key {key!r}; allowed keys: {', '.join(allowed)}")
            elif key in result:
                self.problem(key_node, f"{what}: key {key!r} is given twice; keep one")
            else:
                result[key] = value_node
        return result

    def text(self, node: yaml.Node, what: str) -> str | None:
        """A scalar as written, so `user: no` is the text "no", not YAML's false."""
        if isinstance(node, yaml.ScalarNode) and node.tag != _NULL_TAG:
            return str(node.value)
        self.problem(node, f"{what} must be text")
        return None

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        self.problem(node, f"{what} must be a list (items starting with `- `)")
        return []

    # --- the parts ----------------------------------------------------------------------------------------------

    def stories(self, root: yaml.Node, default_agent: str | None, folder: Path | None) -> list[Story]:
        top = self.mapping(root, "the stories file", _TOP_KEYS)
        if top is None:
            return []
        agent = default_agent
        if "agent" in top:
            agent = self.text(top["agent"], "agent")
        elif agent is None:
            self.problem(root, "no agent: add `agent: <name>` at the top, or put the file in <agent>/stories/")
        if "stories" not in top:
            self.problem(root, "the file needs `stories:`, a list of stories (each with `name` and `steps`)")
            return []
        found: list[Story] = []
        seen: dict[str, int] = {}
        for node in self.sequence(top["stories"], "stories"):
            story = self.story(node, agent or "?", folder)
            if story is None:
                continue
            if story.name in seen:
                self.problem(node, f"story {story.name!r} is defined twice (first on line {seen[story.name]}); "
                                   "give each story its own name")
                continue
            seen[story.name] = story.line
            found.append(story)
        if not found and not self.problems:
            self.problem(top["stories"], "`stories:` is empty; add at least one story")
        return found

    def story(self, node: yaml.Node, agent: str, folder: Path | None) -> Story | None:
        keys = self.mapping(node, "a story", _STORY_KEYS)
        if keys is None:
            return None
        name = self.text(keys["name"], "a story's name") if "name" in keys else None
        if "name" not in keys:
            self.problem(node, "a story needs `name:`")
        if "steps" not in keys:
            self.problem(node, "a story needs `steps:`, a list of user/human/event steps")
            return None
        steps = [step for item in self.sequence(keys["steps"], "steps") if (step := self.step(item)) is not None]
        if not keys["steps"].value:
            self.problem(keys["steps"], "`steps:` is empty; add at least one step")
        if name is None:
            return None
        return Story(name, agent, self.file, _line(node), tuple(steps), folder)

    def step(self, node: yaml.Node) -> StoryStep | None:
        keys = self.mapping(node, "a step", _STEP_KEYS)
        if keys is None:
            return None
        # The checks first, so that their problems are reported even when the input is wrong too.
        replies = self.replies(keys["bot"]) if "bot" in keys else None
        context: Mapping[str, Any] | None = None
        if "context" in keys:
            if isinstance(keys["context"], yaml.MappingNode):
                context = self.expected_value(keys["context"])
            else:
                self.problem(keys["context"], "`context:` must be a mapping of the keys to check, e.g. "
                                              "{session_started: true}")
        state = self.text(keys["state"], "`state:` (idle, parked, ended or dialogue/node)") if "state" in keys \
            else None
        checks: dict[str, Any] = {"replies": replies, "context": context, "state": state}
        inputs = [key for key in _INPUT_KEYS if key in keys]
        if len(inputs) != 1:
            self.problem(node, "a step needs exactly one of `user:`, `human:` or `event:`"
                         + (f" (it has {', '.join(inputs)})" if inputs else ""))
            return None
        line = _line(node)
        value = keys[inputs[0]]
        if inputs[0] == "user":
            text = self.text(value, "`user:` (what the user says)")
            return StoryStep(self.file, line, "user", text=text, **checks) if text is not None else None
        if inputs[0] == "human":
            human = self.human(value)
            if human is None:
                return None
            signal, person, said = human
            return StoryStep(self.file, line, "human", text=said, signal=signal, name=person, **checks)
        event = self.event(value)
        if event is None:
            return None
        return StoryStep(self.file, line, "event", signal="event", name=event[0], data=event[1], **checks)

    def human(self, node: yaml.Node) -> tuple[str, str | None, str | None] | None:
        """`{take: person}`, `{reply: text, as: person}`, `release` or `{release: person}`."""
        usage = "`human:` must be {take: PERSON}, {reply: TEXT, as: PERSON} or release"
        if isinstance(node, yaml.ScalarNode):
            if node.value == "release":
                return "human_release", None, None
            self.problem(node, usage)
            return None
        keys = self.mapping(node, "`human:`", (*_HUMAN_ACTIONS, "as"))
        if keys is None:
            return None
        actions = [key for key in _HUMAN_ACTIONS if key in keys]
        if len(actions) != 1:
            self.problem(node, usage)
            return None
        action = actions[0]
        value = self.text(keys[action], f"`human: {{{action}: ...}}`")
        person = self.text(keys["as"], "`as:` (the person)") if "as" in keys else None
        if value is None:
            return None
        if action == "reply":
            return "human_reply", person, value
        if "as" in keys:
            self.problem(keys["as"], f"`as:` goes with reply; for {action} write {{{action}: PERSON}}")
        return f"human_{action}", value, None

    def event(self, node: yaml.Node) -> tuple[str, dict[str, Any]] | None:
        keys = self.mapping(node, "`event:`", ("name", "data"))
        if keys is None:
            return None
        if "name" not in keys:
            self.problem(node, "`event:` needs `name:`, the event type a policy trigger names (e.g. ops.incident)")
            return None
        name = self.text(keys["name"], "the event's name")
        data: Any = {}
        if "data" in keys:
            data = self.plain(keys["data"])
            if not isinstance(data, dict):
                self.problem(keys["data"], "the event's `data:` must be a mapping (its JSON payload)")
                return None
        return (name, data) if name is not None else None

    def replies(self, node: yaml.Node) -> tuple[Expected, ...] | None:
        if isinstance(node, yaml.SequenceNode):
            found = [self.reply(item) for item in node.value]
            return tuple(item for item in found if item is not None)
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG:
            self.problem(node, "`bot:` is empty; write `bot: []` for no reply, or leave `bot` out not to check")
            return None
        reply = self.reply(node)
        return (reply,) if reply is not None else None

    def reply(self, node: yaml.Node) -> Expected | None:
        if isinstance(node, yaml.MappingNode):
            keys = self.mapping(node, "an expected reply", ("matches",))
            if keys is None or "matches" not in keys:
                return None
            source = self.text(keys["matches"], "`matches:`")
            return Expected(pattern=self.regex(keys["matches"], source)) if source is not None else None
        text = self.text(node, "an expected reply (text, or {matches: REGEX})")
        return Expected(text=text) if text is not None else None

    def regex(self, node: yaml.Node, source: str) -> re.Pattern[str] | None:
        try:
            return re.compile(source, re.DOTALL)
        except re.error as exc:
            self.problem(node, f"bad regular expression {source!r}: {exc.msg}; escape special characters "
                               "like . ( ) ? with a backslash")
            return None

    def expected_value(self, node: yaml.Node) -> Any:
        """Plain data, except that a mapping of only `matches:` is a regular expression for a text value."""
        if isinstance(node, yaml.MappingNode):
            keys = [key.value for key, _ in node.value if isinstance(key, yaml.ScalarNode)]
            if keys == ["matches"]:
                source = self.text(node.value[0][1], "`matches:`")
                return Expected(pattern=self.regex(node.value[0][1], source)) if source is not None else None
            return {str(self.plain(key)): self.expected_value(value) for key, value in node.value}
        if isinstance(node, yaml.SequenceNode):
            return [self.expected_value(item) for item in node.value]
        return self.plain(node)


def load_stories_text(text: str, file: str = "<string>", agent: str | None = None,
                      folder: Path | None = None) -> list[Story]:
    """The stories written in `text`; raises StoryError listing every problem with `file:line`."""
    parser = _Parser(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise StoryError([f"{file}:{mark.line + 1 if mark else 0}: YAML syntax error: {what}"]) from None
    if root is None:
        raise StoryError([f"{file}:1: the file is empty; it needs `stories:` (see docs/policies.md)"])
    stories = parser.stories(root, agent, folder)
    if parser.problems:
        raise StoryError([f"{file}:{line}: {message}" for line, message in sorted(parser.problems, key=lambda p: p[0])])
    return stories


def load_stories(path: Path | str) -> list[Story]:
    """The stories in file `path`; without `agent:` the agent is the folder holding its `stories/` folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoryError([f"{path}:0: cannot read the stories file ({exc}); check the path"]) from None
    folder = path.resolve().parent.parent if path.resolve().parent.name == STORIES_DIR else None
    return load_stories_text(text, str(path), folder.name if folder else None, folder)


def story_files(path: Path | str) -> list[Path]:
    """A stories file itself, or every `*.yaml` of a `stories/` folder, of an agent folder's `stories/`, or of the
    `stories/` of every agent in a folder of agents (`agents/`)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise StoryError([f"{path}:0: no such file or folder; give a stories file or an agent folder"])
    own = (path / STORIES_DIR).is_dir()
    folder = path / STORIES_DIR if own else path
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not files and not own:
        for agent in sorted(sub for sub in path.glob(f"*/{STORIES_DIR}") if sub.is_dir()):
            files += sorted([*agent.glob("*.yaml"), *agent.glob("*.yml")])
    if not files:
        raise StoryError([f"{path}:0: no stories here; put them in {folder / 'name.yaml'}"])
    return files


def collect_stories(paths: Sequence[Path | str]) -> list[Story]:
    """Every story under `paths` (files or agent folders); every file's problems are reported together."""
    stories: list[Story] = []
    problems: list[str] = []
    for path in paths:
        try:
            files = story_files(path)
        except StoryError as exc:
            problems += exc.problems
            continue
        for file in files:
            try:
                stories += load_stories(file)
            except StoryError as exc:
                problems += exc.problems
    if problems:
        raise StoryError(problems)
    return stories


# --- results ------------------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """What one step produced, and what did not match (`problems`; empty: it passed)."""

    step: StoryStep
    replies: list[str] = field(default_factory=list)
    context: Mapping[str, Any] | None = None
    state: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # transitions and handoffs, shown when the step fails

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self, number: int) -> str:
        lines = [f"  step {number} ({self.step.where}) {self.step.describe()}"]
        lines += [f"    ! {problem}" for problem in self.problems]
        if self.step.replies is not None:
            lines.append("    expected replies:" if self.step.replies else "    expected replies: none")
            lines += [f"      {i}. {expected}" for i, expected in enumerate(self.step.replies, 1)]
        lines.append("    got replies:" if self.replies else "    got replies: none")
        lines += [f"      {i}. {json.dumps(text, ensure_ascii=False)}" for i, text in enumerate(self.replies, 1)]
        lines.append(f"    state: {self.state}")
        if self.context is not None:
            lines.append(f"    context: {json.dumps(self.context, sort_keys=True, ensure_ascii=False, default=str)}")
        lines += [f"    {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class StoryResult:
    """A story's outcome: the steps run (it stops at the first failing one) or an error that kept it from running."""

    story: Story
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and len(self.steps) == len(self.story.steps) and all(s.ok for s in self.steps)

    def report(self) -> str:
        head = f"{'PASS' if self.ok else 'FAIL'} {self.story.id}  ({self.story.where}, {self.seconds:.2f}s)"
        if self.ok:
            return head
        lines = [head]
        if self.error:
            lines.append(f"  ! {self.error}")
        for number, step in enumerate(self.steps, 1):
            if not step.ok:
                lines.append(step.report(number))
        if len(self.steps) < len(self.story.steps) and not self.error:
            lines.append(f"  (steps {len(self.steps) + 1}-{len(self.story.steps)} not run)")
        return "\n".join(lines)


def check_step(step: StoryStep, result: StepResult) -> None:
    """Compare what a step produced with what the story expects; mismatches go to `result.problems`."""
    if step.replies is not None:
        expected, got = step.replies, result.replies
        if len(expected) != len(got):
            result.problems.append(f"expected {_count(len(expected))}, got {_count(len(got))}")
        for index, (want, have) in enumerate(zip(expected, got, strict=False), 1):
            if not want.matches(have):
                result.problems.append(f"reply {index}: expected {want}, got {json.dumps(have, ensure_ascii=False)}")
    if step.context is not None:
        result.problems += [f"context {problem}" for problem in _subset(step.context, result.context or {}, "")]
    if step.state is not None and step.state != result.state:
        result.problems.append(f"state: expected {step.state}, got {result.state}")


def _count(n: int) -> str:
    return "no reply" if n == 0 else ("1 reply" if n == 1 else f"{n} replies")


def _subset(expected: Any, got: Any, path: str) -> Iterator[str]:
    """Where `got` does not contain `expected` (mappings: a subset, recursively, where null means absent or null;
    lists and values: equal)."""
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping):
            yield f"{path or '(root)'}: expected a mapping, got {_show(got)}"
            return
        for key, want in expected.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in got:
                if want is not None:  # `key: null` means "absent (or null)"
                    yield f"{where}: expected {_show(want)}, got nothing (the key is missing)"
            else:
                yield from _subset(want, got[key], where)
    elif isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            yield f"{path}: expected {_show(expected)}, got {_show(got)}"
            return
        for index, (want, have) in enumerate(zip(expected, got, strict=True)):
            yield from _subset(want, have, f"{path}[{index}]")
    elif isinstance(expected, Expected):
        if not (isinstance(got, str) and expected.matches(got)):
            yield f"{path}: expected a text that {expected}, got {_show(got)}"
    elif got != expected or isinstance(got, bool) != isinstance(expected, bool):
        yield f"{path}: expected {_show(expected)}, got {_show(got)}"


def _show(value: Any) -> str:
    if isinstance(value, Expected):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_show(item)}" for key, item in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False, default=str)


def state_label(state: Mapping[str, Any]) -> str:
    """The label the core gives a session state (the `to_state` of its transitions): idle, parked, ended or
    dialogue/node."""
    if state["status"] == core.PARKED:
        return "parked"
    if state["status"] == core.ENDED:
        return "ended"
    return f"{state['flow']}/{state['node']}" if state["flow"] else core.IDLE


# --- agents -------------------------------------------------------------------------------------------------------


class Agents:
    """Agent packages by name, loaded once: the story's own folder when it has a policy, else `agents/<name>`."""

    def __init__(self) -> None:
        self._loaded: dict[Path, AgentPackage] = {}

    def for_story(self, story: Story) -> AgentPackage:
        from agents.registry import AGENTS_DIR, load_agent

        folder = (story.folder if story.folder is not None and (story.folder / "policy.yaml").is_file()
                  else AGENTS_DIR / story.agent).resolve()
        if not (folder / "policy.yaml").is_file():
            raise StoryError([f"{story.where}: no agent {story.agent!r} (no {folder / 'policy.yaml'}); fix `agent:`"])
        if folder not in self._loaded:
            self._loaded[folder] = load_agent(folder)
        package = self._loaded[folder]
        if package.name != story.agent:
            raise StoryError([f"{story.where}: the story is for agent {story.agent!r}, but {folder / 'policy.yaml'} "
                              f"is agent {package.name!r}; fix `agent:`"])
        return package


# --- offline ------------------------------------------------------------------------------------------------------


def run_offline(story: Story, agents: Agents | None = None) -> StoryResult:
    """Run `story` through the keyword recogniser and `core.step`, workflows inline; pure and deterministic."""
    started = time.monotonic()
    result = StoryResult(story)
    try:
        package = (agents or Agents()).for_story(story)
    except (StoryError, DialogueError) as exc:
        result.error = str(exc)
        return result
    session = _OfflineSession(package, story)
    for index, step in enumerate(story.steps):
        outcome = session.apply(index, step)
        check_step(step, outcome)
        result.steps.append(outcome)
        if not outcome.ok:
            break
    result.seconds = time.monotonic() - started
    return result


class _OfflineSession:
    """One story's session, driven the way the processors drive it (same ids for the same step and effect)."""

    def __init__(self, package: AgentPackage, story: Story) -> None:
        self.package = package
        self.policy = package.policy
        self.recogniser = KeywordRecogniser(package.policy)
        self.story = story
        self.session = "story-" + derived_id(f"{story.agent}/{story.name}", "session")[:12]
        self.state: dict[str, Any] | None = None

    def apply(self, index: int, step: StoryStep) -> StepResult:
        when = BASE_TIME + timedelta(seconds=STEP_SECONDS * (index + 1))
        root = derived_id(f"story/{self.story.agent}/{self.story.name}", f"step/{index}")
        event = self.input_event(step, root, when)
        result = StepResult(step)
        pending = [event]
        rounds = 0
        while pending:
            rounds += 1
            if rounds > MAX_WORKFLOW_ROUNDS:
                result.problems.append(f"more than {MAX_WORKFLOW_ROUNDS} workflow results in one step; does a "
                                       "workflow's result start the workflow again?")
                break
            cause = pending.pop(0)
            self.state, effects = core.step(self.state, cause, self.policy)
            for position, effect in enumerate(effects):
                self.note(result, effect)
                if isinstance(effect, StartWorkflow):
                    pending.append(self.workflow_result(cause, position, effect, result))
        assert self.state is not None
        result.context = self.state["context"]
        result.state = state_label(self.state)
        return result

    def input_event(self, step: StoryStep, root: str, when: datetime) -> Event:
        agent = self.policy.agent
        if step.kind == "user":
            text = step.text or ""
            understanding = self.recogniser.recognise_now(text)
            data = {"session_id": self.session, "agent": agent, "turn_id": root, "text": text, "channel": "test",
                    "locale": None, "intent": understanding.intent, "confidence": understanding.confidence,
                    "entities": [{"name": e.name, "value": e.value, "start": e.start, "end": e.end}
                                 for e in understanding.entities],
                    "model": understanding.model}
            turn = Event(type="switchboard.dialogue.Turn", source=STORY_SOURCE, data={}, subject=self.session,
                         id=root, time=when)
            return turn.caused(core.UNDERSTOOD, STORY_SOURCE, data, effect="understood", time=when)
        return Event(type=core.SIGNAL, source=STORY_SOURCE, data=signal_data(self.session, agent, step),
                     subject=self.session, id=root, time=when)

    def workflow_result(self, cause: Event, position: int, effect: StartWorkflow, result: StepResult) -> Event:
        from agents.inline_workflows import run_inline

        outcome = run_inline(self.package.workflows, effect.workflow, effect.input)
        result.notes.append(f"workflow {effect.workflow} {outcome['status']}"
                            + (f": {outcome['error']}" if outcome.get("error") else ""))
        request = cause.caused("switchboard.workflow.Request", STORY_SOURCE, {},
                               effect=f"{position}.StartWorkflow", time=cause.time)
        data = {"session_id": self.session, "agent": self.policy.agent, "kind": "workflow_result",
                "name": effect.workflow, "text": None,
                "data": json.dumps({"run_id": effect.run_id, **outcome}, sort_keys=True, default=str)}
        return request.caused(core.SIGNAL, STORY_SOURCE, data, effect="result", time=cause.time)

    @staticmethod
    def note(result: StepResult, effect: Effect) -> None:
        if isinstance(effect, SendReply):
            result.replies.append(effect.text)
        elif isinstance(effect, RecordTransition):
            result.notes.append(f"transition {effect.from_state} -> {effect.to_state}: {effect.reason}")
        elif isinstance(effect, NotifyHandoff):
            result.notes.append(f"handoff {effect.kind}" + (f": {effect.reason}" if effect.reason else ""))
        elif isinstance(effect, StartWorkflow):
            result.notes.append(f"workflow {effect.workflow} started with "
                                f"{json.dumps(dict(effect.input), sort_keys=True, default=str)}")
        elif isinstance(effect, SendCommand):
            result.notes.append(f"command {effect.name} to {effect.target} on {effect.topic}")
        else:  # agents working together: not run offline (they need the other agents), shown as what was sent
            to = effect.entry if isinstance(effect, SendTransfer) else effect.agent
            result.notes.append(f"{type(effect).__name__} to {to}")


def signal_data(session: str, agent: str, step: StoryStep) -> dict[str, Any]:
    """The `switchboard.dialogue.Signal` payload of a human or event step."""
    return {"session_id": session, "agent": agent, "kind": step.signal, "name": step.name, "text": step.text,
            "data": json.dumps(dict(step.data), sort_keys=True)}


# --- on the bus ---------------------------------------------------------------------------------------------------


@dataclass
class _Seen:
    """Everything that arrived for one session, in arrival order; `changed` is set on each new event."""

    replies: list[Event] = field(default_factory=list)
    transitions: list[Event] = field(default_factory=list)
    handoffs: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class BusStories:
    """Runs stories against a running stack: one producer, and one consumer reading `dialogue.replies`,
    `dialogue.handoffs` and the agents' transitions from their true ends, dispatching by session id.

        async with BusStories(settings, agents=["customer_service"]) as bus:
            results = await bus.run_all(stories)
    """

    def __init__(self, settings: Settings, agents: Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        from topics import catalog

        self.settings = settings
        self.timeout_s = timeout_s
        self.topics = [catalog.DIALOGUE_REPLIES.name, catalog.DIALOGUE_HANDOFFS.name,
                       *sorted({catalog.agent_topics(agent).transitions.name for agent in agents})]
        self.sessions: dict[str, _Seen] = {}
        self.ids: set[str] = set()
        self._reader: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    async def __aenter__(self) -> BusStories:
        from aiokafka import TopicPartition

        from infra.bus.clients import consumer, producer
        from infra.bus.reading import find_ends
        from topics.codec import AvroCodec

        self.codec = AvroCodec()
        self.producer = producer(self.settings)
        self.consumer = consumer(self.settings)
        await self.producer.start()
        await self.consumer.start()
        try:
            await self.consumer.topics()
            partitions = []
            for topic in self.topics:
                ids = self.consumer.partitions_for_topic(topic)
                if not ids:
                    raise StoryError([f"topic {topic} does not exist on the bus; create it with "
                                      "`switchboard topics create` (or is a worker for this agent running?)"])
                partitions += [TopicPartition(topic, p) for p in sorted(ids)]
            # The true ends: replies of earlier runs are not this run's, and Tansu under-reports ends.
            ends = await find_ends(self.consumer, partitions, self.settings)
            self.consumer.assign(partitions)
            for tp in partitions:
                self.consumer.seek(tp, ends[tp].end)
        except BaseException:
            await self.consumer.stop()
            await self.producer.stop()
            raise
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.consumer.stop()
        await self.producer.stop()

    async def _read(self) -> None:
        from topics import catalog
        from topics.binding import decode_event
        from topics.errors import DecodeError

        try:
            while True:
                batch = await self.consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        try:
                            event = decode_event(record.value, record.headers, self.codec)
                        except DecodeError:
                            continue
                        session = str(event.data.get("session_id") or "")
                        seen = self.sessions.get(session)
                        if seen is None or event.id in self.ids:
                            continue  # another session's, or a redelivered copy
                        self.ids.add(event.id)
                        if record.topic == catalog.DIALOGUE_REPLIES.name:
                            seen.replies.append(event)
                        elif record.topic == catalog.DIALOGUE_HANDOFFS.name:
                            seen.handoffs.append(event)
                        else:
                            seen.transitions.append(event)
                        seen.changed.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the consumer broke: wake every waiting story to report it
            self._failure = exc
            for seen in self.sessions.values():
                seen.changed.set()

    async def run_all(self, stories: Sequence[Story]) -> list[StoryResult]:
        """Every story at once, each on a fresh session."""
        return list(await asyncio.gather(*(self.run(story) for story in stories)))

    async def run(self, story: Story) -> StoryResult:
        started = time.monotonic()
        result = StoryResult(story)
        session = f"story-{uuid.uuid4().hex[:12]}"
        seen = self.sessions.setdefault(session, _Seen())
        done: dict[str, tuple[StepResult, int]] = {}  # earlier steps by correlation id, with their reply count
        try:
            for step in story.steps:
                outcome = await self._step(story, session, step, seen, done)
                result.steps.append(outcome)
                if not outcome.ok:
                    break
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            result.seconds = time.monotonic() - started
        return result

    async def _step(self, story: Story, session: str, step: StoryStep, seen: _Seen,
                    done: dict[str, tuple[StepResult, int]]) -> StepResult:
        from topics import catalog
        from topics.binding import encode_event

        if step.kind == "user":
            spec = catalog.DIALOGUE_TURNS
            event = Event(type=spec.value_schema, source=STORY_SOURCE, subject=session, principal="user:stories",
                          data={"session_id": session, "agent": story.agent, "text": step.text or "",
                                "channel": "test", "locale": None})
            cause = derived_id(event.id, "understood")
        else:
            spec = catalog.agent_topics(story.agent).signals
            event = Event(type=spec.value_schema, source=STORY_SOURCE, subject=session, principal="user:stories",
                          data=signal_data(session, story.agent, step))
            cause = event.id
        result = StepResult(step)
        record = encode_event(event, self.codec)
        await self.producer.send_and_wait(spec.name, record.value, key=record.key, headers=record.headers)
        deadline = time.monotonic() + self.timeout_s
        while True:
            self._observe(seen, done, event.id, result)
            if self._complete(seen, cause, step, result):
                break
            if self._failure is not None:
                raise StoryError([f"reading the bus failed: {self._failure}"])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.problems.append(self._timeout_message(seen, cause, step))
                break
            seen.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(seen.changed.wait(), remaining)
        check_step(step, result)
        done[event.id] = (result, len(result.replies))
        return result

    @staticmethod
    def _observe(seen: _Seen, done: dict[str, tuple[StepResult, int]], correlation: str,
                 result: StepResult) -> None:
        """This step's replies, the session's latest state and context, and late replies of earlier steps."""
        result.replies = [r.data["text"] for r in seen.replies if r.correlationid == correlation]
        for earlier_id, (earlier, counted) in list(done.items()):
            late = [r.data["text"] for r in seen.replies if r.correlationid == earlier_id][counted:]
            if late:
                done[earlier_id] = (earlier, counted + len(late))
                result.problems += [f"a reply to an earlier step ({earlier.step.where}) arrived after that step had "
                                    f"passed: {json.dumps(text, ensure_ascii=False)}" for text in late]
        if not seen.transitions:  # nothing has moved the session yet: it is where every session starts
            result.state, result.context = core.IDLE, {}
        else:
            last = seen.transitions[-1].data
            result.state = str(last["to_state"])
            try:
                result.context = json.loads(last.get("context") or "{}")
            except ValueError:
                result.context = {"(unreadable)": last.get("context")}
        result.notes = [f"transition {t.data['from_state']} -> {t.data['to_state']}: {t.data['reason']}"
                        for t in seen.transitions if t.correlationid == correlation]
        result.notes += [f"handoff {h.data['kind']}" + (f": {h.data['reason']}" if h.data.get("reason") else "")
                         for h in seen.handoffs if h.correlationid == correlation]

    @staticmethod
    def _complete(seen: _Seen, cause: str, step: StoryStep, result: StepResult) -> bool:
        if step.replies is not None and len(result.replies) < len(step.replies):
            return False
        if not any(e.causationid == cause for e in (*seen.replies, *seen.transitions, *seen.handoffs)):
            return False
        if step.state is not None and result.state != step.state:
            return False
        return step.context is None or not any(_subset(step.context, result.context or {}, ""))

    def _timeout_message(self, seen: _Seen, cause: str, step: StoryStep) -> str:
        caused = any(e.causationid == cause for e in (*seen.replies, *seen.transitions, *seen.handoffs))
        waited = [] if caused else ["any effect of this step (is a worker running this agent?)"]
        if step.replies is not None:
            waited.append(_count(len(step.replies)))
        if step.state is not None or step.context is not None:
            waited.append("a transition showing the expected state/context")
        return f"timed out after {self.timeout_s:g}s waiting for {', '.join(waited)}"


async def run_on_bus(settings: Settings, stories: Sequence[Story],
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> list[StoryResult]:
    """Run `stories` concurrently against the running stack that `settings` points at."""
    async with BusStories(settings, sorted({story.agent for story in stories}), timeout_s) as bus:
        return await bus.run_all(stories)
