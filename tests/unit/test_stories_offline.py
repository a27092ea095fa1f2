"""Conversation tests offline: every shipped story passes through the pure core, the parser reports every problem
with its line, and a failing story says what was expected and what came instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.dialogue.stories import (
    Agents,
    Story,
    StoryError,
    collect_stories,
    load_stories,
    load_stories_text,
    run_offline,
    story_files,
)
from agents.registry import AGENTS_DIR
from infra.cli import cli

SHIPPED = collect_stories(sorted(path.parent for path in AGENTS_DIR.glob("*/stories")))
AGENTS = Agents()


def test_every_example_agent_ships_stories() -> None:
    assert {story.agent for story in SHIPPED} == {"customer_service", "helpdesk", "smart_office"}


@pytest.mark.parametrize("story", SHIPPED, ids=[story.id for story in SHIPPED])
def test_shipped_story(story: Story) -> None:
    result = run_offline(story, AGENTS)
    assert result.ok, result.report()


def _story(text: str, agent: str | None = "customer_service") -> Story:
    (story,) = load_stories_text(text, "s.yaml", agent)
    return story


def _problems(text: str, agent: str | None = "customer_service") -> list[str]:
    with pytest.raises(StoryError) as caught:
        load_stories_text(text, "s.yaml", agent)
    return caught.value.problems


# --- the format ---------------------------------------------------------------------------------------------------


def test_step_forms_are_read() -> None:
    story = _story("""\
stories:
  - name: all forms
    steps:
      - user: no
        bot: "exact"
      - user: "3"
        bot: [one, {matches: "t.o"}]
        context: {a: {b: [1, {matches: "x+"}]}, gone: null}
        state: idle
      - human: {take: alice}
        bot: []
      - human: {reply: "Hi", as: alice}
      - human: release
      - human: {release: bob}
      - event: {name: ops.incident, data: {service: mail}}
""")
    steps = story.steps
    assert steps[0].text == "no"  # what was written, not YAML's false
    assert [str(e) for e in steps[0].replies or ()] == ['"exact"']
    assert steps[1].text == "3"
    assert steps[1].replies is not None and steps[1].replies[1].matches("two")
    assert not steps[1].replies[1].matches("two!")  # a full match
    assert steps[1].state == "idle"
    assert steps[2].replies == () and (steps[2].signal, steps[2].name) == ("human_take", "alice")
    assert steps[3].replies is None and (steps[3].signal, steps[3].name, steps[3].text) == ("human_reply", "alice",
                                                                                            "Hi")
    assert (steps[4].signal, steps[4].name) == ("human_release", None)
    assert (steps[5].signal, steps[5].name) == ("human_release", "bob")
    assert (steps[6].kind, steps[6].name, dict(steps[6].data)) == ("event", "ops.incident", {"service": "mail"})
    assert story.line == 2 and steps[2].line == 10


def test_every_problem_is_reported_with_its_line() -> None:
    problems = _problems("""\
stories:
  - name: broken
    steps:
      - user: hi
        event: {name: x}
      - bot: [{matches: "(("}]
      - human: {wave: alice}
      - user: [a list]
        context: 3
      - event: {data: {a: 1}}
        colour: red
  - steps: []
  - name: broken
    steps:
      - user: hi
""", agent=None)
    assert problems == [
        "s.yaml:1: no agent: add `agent: <name>` at the top, or put the file in <agent>/stories/",
        "s.yaml:4: a step needs exactly one of `user:`, `human:` or `event:` (it has user, event)",
        "s.yaml:6: bad regular expression '((': missing ), unterminated subpattern; escape special characters "
        "like . ( ) ? with a backslash",
        "s.yaml:6: a step needs exactly one of `user:`, `human:` or `event:`",
        "s.yaml:7: `human:`: unknown key 'wave'; allowed keys: take, reply, release, as",
        "s.yaml:7: `human:` must be {take: PERSON}, {reply: TEXT, as: PERSON} or release",
        "s.yaml:8: `user:` (what the user says) must be text",
        "s.yaml:9: `context:` must be a mapping of the keys to check, e.g. {session_started: true}",
        "s.yaml:10: `event:` needs `name:`, the event type a policy trigger names (e.g. ops.incident)",
        "s.yaml:11: a step: unknown key 'colour'; allowed keys: user, human, event, bot, context, state",
        "s.yaml:12: a story needs `name:`",
        "s.yaml:12: `steps:` is empty; add at least one step",
        "s.yaml:13: story 'broken' is defined twice (first on line 2); give each story its own name",
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ("stories: [\n", "s.yaml:2: YAML syntax error:"),
    ("", "s.yaml:1: the file is empty"),
    ("agent: x\n", "s.yaml:1: the file needs `stories:`"),
    ("stories: []\n", "s.yaml:1: `stories:` is empty"),
    ("stories:\n  - name: n\n    steps:\n      - user: hi\n        bot:\n",
     "s.yaml:5: `bot:` is empty; write `bot: []` for no reply"),
    ("stories:\n  - name: n\n    steps:\n      - human: {take: a, as: b}\n",
     "s.yaml:4: `as:` goes with reply; for take write {take: PERSON}"),
])
def test_parser_errors(text: str, expected: str) -> None:
    assert _problems(text)[0].startswith(expected)


def test_the_agent_defaults_to_the_folder_holding_stories(tmp_path: Path) -> None:
    folder = tmp_path / "helpdesk" / "stories"
    folder.mkdir(parents=True)
    (folder / "a.yaml").write_text("stories:\n  - name: hello\n    steps:\n      - user: hi\n", encoding="utf-8")
    (folder / "b.yml").write_text("agent: customer_service\nstories:\n  - name: x\n    steps:\n      - user: hi\n",
                                  encoding="utf-8")
    assert story_files(tmp_path / "helpdesk") == [folder / "a.yaml", folder / "b.yml"]
    assert [story.agent for story in collect_stories([tmp_path / "helpdesk"])] == ["helpdesk", "customer_service"]
    # No policy in that folder: the agent of that name under agents/ runs it.
    assert run_offline(load_stories(folder / "a.yaml")[0]).ok


def test_a_folder_of_agents_runs_every_agents_stories(tmp_path: Path) -> None:
    for agent in ("helpdesk", "customer_service"):
        (tmp_path / agent / "stories").mkdir(parents=True)
        story = "stories:\n  - name: hello\n    steps:\n      - user: hi\n"
        (tmp_path / agent / "stories" / "a.yaml").write_text(story, encoding="utf-8")
    assert story_files(tmp_path) == [tmp_path / "customer_service" / "stories" / "a.yaml",
                                     tmp_path / "helpdesk" / "stories" / "a.yaml"]
    assert [story.agent for story in collect_stories([tmp_path])] == ["customer_service", "helpdesk"]
    assert {story.id for story in collect_stories([AGENTS_DIR])} == {story.id for story in SHIPPED}


def test_missing_paths_and_agents_are_errors(tmp_path: Path) -> None:
    with pytest.raises(StoryError, match="no such file or folder"):
        collect_stories([tmp_path / "nope"])
    with pytest.raises(StoryError, match="no stories here"):
        story_files(tmp_path)
    result = run_offline(_story("stories:\n  - name: n\n    steps:\n      - user: hi\n", agent="nobody"))
    assert not result.ok and result.error is not None and "no agent 'nobody'" in result.error


# --- running ------------------------------------------------------------------------------------------------------


def test_a_failing_story_shows_expected_and_got_and_stops() -> None:
    story = _story("""\
stories:
  - name: wrong
    steps:
      - user: hi
        bot: "您好,我是您的数字助理,请描述您的需求"
      - user: where is my order AB1234
        bot: [{matches: "Order AB1234 is lost"}, "and a second reply"]
        context: {order: {carrier: UPS}, session_started: false, nothing: 1}
        state: parked
      - user: never reached
""")
    result = run_offline(story, AGENTS)
    assert not result.ok and len(result.steps) == 2 and result.steps[0].ok
    report = result.report()
    assert report.startswith("FAIL customer_service: wrong  (s.yaml:2,")
    for line in [
        "  step 2 (s.yaml:6) user: where is my order AB1234",
        "    ! expected 2 replies, got 1 reply",
        '    ! reply 1: expected matches /Order AB1234 is lost/, got "Order AB1234 was delivered by DHL on '
        '2026-11-20."',
        '    ! context order.carrier: expected "UPS", got "DHL"',
        "    ! context session_started: expected false, got true",
        "    ! context nothing: expected 1, got nothing (the key is missing)",
        "    ! state: expected parked, got idle",
        "      2. \"and a second reply\"",
        "    transition order_status/lookup -> order_status/delivered: next",
        "    workflow order_status succeeded",
        "  (steps 3-3 not run)",
    ]:
        assert any(got.startswith(line) for got in report.splitlines()), f"{line!r} not in\n{report}"


def test_context_values_are_compared_strictly() -> None:
    story = _story("""\
stories:
  - name: types
    steps:
      - user: hi
        context: {session_started: 1}
""")
    result = run_offline(story, AGENTS)
    assert result.steps[0].problems == ["context session_started: expected 1, got true"]


def test_runs_are_deterministic() -> None:
    story = next(s for s in SHIPPED if s.name == "ticket created after confirmation")
    first, second = run_offline(story, AGENTS), run_offline(story, AGENTS)
    assert [s.replies for s in first.steps] == [s.replies for s in second.steps]
    assert [s.notes for s in first.steps] == [s.notes for s in second.steps]


def test_cli_offline(tmp_path: Path) -> None:
    runner = CliRunner()
    passed = runner.invoke(cli, ["test-stories", "--offline", str(AGENTS_DIR / "helpdesk")], obj={})
    assert passed.exit_code == 0, passed.output
    assert "PASS helpdesk: greeting" in passed.output and " 0 failed (offline)" in passed.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: helpdesk\nstories:\n  - name: n\n    steps:\n      - user: hi\n        bot: nope\n",
                   encoding="utf-8")
    failed = runner.invoke(cli, ["test-stories", "--offline", str(bad)], obj={})
    assert failed.exit_code == 1
    assert "FAIL helpdesk: n" in failed.output and '! reply 1: expected "nope"' in failed.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("stories: 3\n", encoding="utf-8")
    errored = runner.invoke(cli, ["test-stories", "--offline", str(broken)], obj={})
    assert errored.exit_code == 1 and f"{broken}:1: no agent" in errored.output
