"""The policy loader: the README example, a full-featured policy, and every check with its line number."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.dialogue.loader import (
    PolicyError,
    Problem,
    check_policy,
    discover_policies,
    load_policy,
    load_policy_text,
)
from agents.dialogue.model import (
    CallWorkflow,
    ClearSlots,
    EndSession,
    Goto,
    Handoff,
    Increment,
    Publish,
    Reply,
    SetContext,
)
from infra.cli import cli

README = """\
dialogues:
  - id: welcome
    trigger: "hi|hello|您好"
    actions:
      - type: reply
        content: "您好,我是您的数字助理,请描述您的需求"
      - type: set_context
        key: session_started
        value: true
"""

FULL = """\
agent: shop
settings:
  history: 10
  session_timeout: 30m
  waiting_reply: "Still working on it, {{ default(context.name, 'friend') }}."
intents:
  human: ["talk to (a )?person", "human"]
  affirm: {examples: ["yes", "sure"], confidence: 0.8}
  deny: ["no"]
  order: ["order"]
entities:
  order_id: "([A-Z]{2}\\\\d{4})"
  email: {pattern: "[\\\\w.]+@[\\\\w.]+"}
dialogues:
  - id: handoff
    interrupts: true
    trigger: {intent: human}
    actions:
      - {type: handoff}
  - id: alarm
    trigger: {event: device.alarm}
    actions:
      - type: publish
        topic: devices.commands
        target: "{{ event.data.device }}"
        name: silence
        args: {why: "{{ text }}"}
      - {type: reply, text: "Alarm handled."}
  - id: order
    trigger:
      - {intent: order, min_confidence: 0.6}
      - {regex: "where is", if: "turn > 0"}
    nodes:
      - id: ask
        form:
          slots:
            - name: order_id
              entity: order_id
              ask: "Your order number?"
              pattern: "[A-Z]{2}\\\\d{4}"
              validate: "len(value) == 6"
              invalid: "{{ value }} is not an order number."
              max_attempts: 2
              on_fail: give_up
        next: lookup
      - id: lookup
        actions:
          - type: call_workflow
            workflow: order_status
            input: {order_id: "{{ slots.order_id }}"}
            save_as: order
            on_error: give_up
        next:
          - {if: "context.order.status == 'delivered'", goto: delivered}
          - {goto: confirm}
      - id: delivered
        actions:
          - {type: reply, content: "Delivered."}
          - {type: increment, key: delivered, by: 2}
          - {type: append, key: seen, value: "{{ slots.order_id }}", max_items: 3}
          - {type: clear_slots, slots: [order_id]}
      - id: confirm
        actions:
          - {type: reply, content: "Anything else?"}
        listen:
          - {intent: affirm, goto: order.ask}
          - {regex: "^no", goto: done}
          - {goto: bye}
      - id: give_up
        actions:
          - {type: unset_context, key: order}
          - {type: goto, node: handoff}
  - id: bye
    actions:
      - {type: end, content: "Bye!"}
fallback:
  actions:
    - {type: reply, content: "Sorry?"}
  limit: 3
  on_limit:
    - {type: handoff, reason: "did not understand"}
"""


def problems_of(text: str) -> list[Problem]:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(textwrap.dedent(text), file="p.yaml", agent="test")
    return caught.value.problems


def one_problem(text: str, *fragments: str) -> Problem:
    """The problem whose message has every fragment (there must be one)."""
    found = [p for p in problems_of(text) if all(f in p.message for f in fragments)]
    assert found, f"no problem mentions {fragments}: {problems_of(text)}"
    return found[0]


def test_readme_example_loads_and_says_what_it_says(tmp_path: Path) -> None:
    folder = tmp_path / "greeter"
    folder.mkdir()
    (folder / "policy.yaml").write_text(README, encoding="utf-8")
    policy = load_policy(folder / "policy.yaml")
    assert policy.agent == "greeter"
    assert len(policy.version) == 16
    (dialogue,) = policy.dialogues
    assert dialogue.id == "welcome" and dialogue.entry.id == "start"
    assert dialogue.triggers[0].pattern is not None and dialogue.triggers[0].pattern.search("Hello there")
    reply, set_context = dialogue.entry.actions
    assert isinstance(reply, Reply) and reply.content.render({}) == "您好,我是您的数字助理,请描述您的需求"
    assert isinstance(set_context, SetContext) and set_context.key == "session_started"
    assert set_context.value is True
    assert policy.fallback.limit == 2 and policy.fallback.on_limit == ()
    assert check_policy(folder / "policy.yaml") == []
    assert discover_policies(tmp_path) == [folder / "policy.yaml"]


def test_full_featured_policy_loads() -> None:
    policy = load_policy_text(FULL, file="shop/policy.yaml")
    assert policy.agent == "shop"
    assert policy.settings.session_timeout_s == 1800 and policy.settings.history == 10
    assert [i.name for i in policy.intents] == ["human", "affirm", "deny", "order"]
    assert policy.intents[1].confidence == 0.8
    assert [e.name for e in policy.entities] == ["order_id", "email"]
    handoff, alarm, order, bye = policy.dialogues
    assert handoff.interrupts and handoff.triggers[0].intent == "human"
    assert isinstance(handoff.entry.actions[0], Handoff)
    assert alarm.triggers[0].event == "device.alarm"
    publish, reply = alarm.entry.actions
    assert isinstance(publish, Publish) and publish.topic == "devices.commands" and publish.name == "silence"
    assert isinstance(reply, Reply)
    assert order.triggers[0].min_confidence == 0.6 and order.triggers[1].when is not None
    ask = order.entry
    assert ask.form is not None and ask.form.slots[0].max_attempts == 2 and ask.form.slots[0].on_fail == "give_up"
    lookup = order.node("lookup")
    assert lookup is not None and isinstance(lookup.actions[0], CallWorkflow)
    assert [r.target for r in lookup.next] == ["delivered", "confirm"] and lookup.next[0].when is not None
    delivered = order.node("delivered")
    assert delivered is not None and isinstance(delivered.actions[1], Increment) and delivered.actions[1].by == 2
    assert isinstance(delivered.actions[3], ClearSlots) and delivered.actions[3].slots == ("order_id",)
    confirm = order.node("confirm")
    assert confirm is not None and [r.target for r in confirm.listen] == ["order.ask", "done", "bye"]
    assert confirm.listen[0].trigger is not None and confirm.listen[0].trigger.intent == "affirm"
    assert confirm.listen[2].trigger is None
    give_up = order.node("give_up")
    assert give_up is not None and isinstance(give_up.actions[1], Goto) and give_up.actions[1].target == "handoff"
    assert isinstance(bye.entry.actions[0], EndSession)
    assert policy.fallback.limit == 3 and isinstance(policy.fallback.on_limit[0], Handoff)


def test_the_shipped_agents_load() -> None:
    root = Path(__file__).resolve().parents[2] / "agents"
    paths = discover_policies(root)
    for path in paths:
        assert check_policy(path) == [], path


@pytest.mark.parametrize(("text", "line", "fragments"), [
    ("dialogues: [\n  - id: x\n", 2, ("YAML syntax error", "column 3")),
    ("- just a list\n", 1, ("must be a mapping",)),
    ("dialogue: []\n", 1, ("unknown key 'dialogue'", "allowed keys")),
    ("agent: x\n", 1, ("needs key 'dialogues'",)),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         actions:
           - {type: reply, content: hi, colour: red}
     """, 5, ("unknown key 'colour'", "allowed keys: type, if, content, text")),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         interrupts: maybe
         actions: [{type: reply, content: hi}]
     """, 4, ("interrupts must be true or false",)),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         actions:
           - {type: reply}
     """, 5, ("needs key 'content'",)),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         actions:
           - {type: shout, content: hi}
     """, 5, ("unknown action type 'shout'", "reply, set_context")),
    ("""\
     dialogues:
       - id: a
         trigger: "hi("
         actions: [{type: reply, content: hi}]
     """, 3, ("bad regular expression", "missing )")),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         actions:
           - {type: reply, content: hi, if: "context.x =="}
     """, 5, ("bad expression",)),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         actions:
           - {type: reply, content: "{{ context.x "}
     """, 5, ("bad template",)),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         actions:
           - {type: reply, content: "{{ secret.x }}"}
     """, 5, ("secret",)),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         actions: [{type: reply, content: hi}]
       - id: a
         trigger: ho
         actions: [{type: reply, content: ho}]
     """, 5, ("dialogue id 'a' is used twice", "line 2")),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         nodes:
           - id: n
             next: n2
           - id: n2
           - id: n
     """, 8, ("node id 'n' is used twice",)),
    ("""\
     intents:
       greet: [hi]
       greet: [hello]
     dialogues:
       - {id: a, trigger: {intent: greet}, actions: [{type: reply, content: hi}]}
     """, 3, ("'greet' is defined twice",)),
    ("""\
     entities:
       city: "[A-Z]\\\\w+"
       city: "x"
     dialogues:
       - {id: a, trigger: hi, actions: [{type: reply, content: hi}]}
     """, 3, ("'city' is defined twice",)),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         nodes:
           - id: one
             form:
               slots:
                 - {name: city, ask: "Where?"}
                 - {name: city, ask: "Where again?"}
     """, 9, ("slot 'city' is asked twice",)),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         nodes:
           - id: one
             next: tow
           - id: two
     """, 6, ("unknown node 'tow'", "nodes of dialogue a: one, two")),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         nodes:
           - id: one
             form:
               slots:
                 - {name: city, ask: "Where?", on_fail: nowhere}
     """, 8, ("unknown node 'nowhere'",)),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         nodes:
           - id: one
             actions:
               - {type: call_workflow, workflow: w, save_as: r, on_error: oops}
     """, 7, ("on_error", "unknown node 'oops'")),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         nodes:
           - id: one
             listen:
               - {regex: yes, goto: nope}
     """, 7, ("unknown node 'nope'",)),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         nodes:
           - id: one
             actions: [{type: reply, content: hi}]
           - id: orphan
             actions: [{type: reply, content: never}]
     """, 7, ("node a.orphan is unreachable",)),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         actions:
           - {type: handoff}
           - {type: reply, content: too late}
     """, 6, ("can never run", "handoff action on line 5")),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         nodes:
           - id: one
             listen: []
     """, 6, ("listen is an empty list",)),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         actions: [{type: reply, content: hi}]
         nodes:
           - {id: one, actions: [{type: reply, content: hi}]}
     """, 4, ("both `nodes:` and `actions:`",)),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         actions:
           - {type: reply, content: "Hello {{ slots.name }}"}
     """, 5, ("slot 'name' is used but no form asks it",)),
    ("""\
     entities:
       city: "[A-Z]\\\\w+"
     dialogues:
       - id: a
         trigger: hi
         form:
           slots:
             - {name: town, ask: "Where?", entity: town}
     """, 8, ("entity 'town' is not defined",)),
    ("""\
     intents:
       greet: [hi]
     dialogues:
       - id: a
         trigger: {intent: greeting}
         actions: [{type: reply, content: hi}]
     """, 5, ("intent 'greeting' is not defined", "greet")),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         actions:
           - {type: publish, topic: lights.commands, target: lamp, name: on}
     """, 5, ("topic 'lights.commands' is not declared", "command topics:")),
    ("""\
     dialogues:
       - id: a
         trigger: hi
         actions:
           - {type: publish, topic: dialogue.replies, target: lamp, name: on}
     """, 5, ("topic 'dialogue.replies' carries switchboard.dialogue.Reply",)),
    ("""\
     settings:
       session_timeout: soon
     dialogues:
       - {id: a, trigger: hi, actions: [{type: reply, content: hi}]}
     """, 2, ("session_timeout must be seconds or a duration",)),
    ("""\
     dialogues:
       - id: a
         actions: [{type: reply, content: hi}]
     """, 2, ("dialogue a has no trigger",)),
])
def test_each_check_reports_its_line(text: str, line: int, fragments: tuple[str, ...]) -> None:
    problem = one_problem(text, *fragments)
    assert problem.line == line, problem
    assert problem.file == "p.yaml"


def test_intent_and_entity_names_are_free_when_the_policy_defines_none() -> None:
    policy = load_policy_text(textwrap.dedent("""\
        dialogues:
          - id: a
            trigger: {intent: anything}
            form:
              slots:
                - {name: town, ask: "Where?", entity: town}
        """), agent="test")
    assert policy.dialogues[0].triggers[0].intent == "anything"


def test_every_problem_is_reported_at_once() -> None:
    text = """\
        dialogues:
          - id: a
            trigger: "hi("
            actions:
              - {type: shout}
              - {type: reply, content: "{{ slots.nobody }}"}
          - id: b
            trigger: ho
            nodes:
              - {id: one, next: missing}
        """
    problems = problems_of(text)
    assert [p.line for p in problems] == sorted(p.line for p in problems)
    lines = {p.line for p in problems}
    assert {3, 5, 6, 10} <= lines
    with pytest.raises(PolicyError) as caught:
        load_policy_text(textwrap.dedent(text), file="p.yaml", agent="test")
    rendered = str(caught.value).splitlines()
    assert len(rendered) >= 4 and all(line.startswith("p.yaml:") for line in rendered)


def test_yes_and_no_stay_names_in_listen_routes() -> None:
    policy = load_policy_text(textwrap.dedent("""\
        intents: {yes: [yes], no: [no]}
        dialogues:
          - id: a
            trigger: hi
            listen:
              - {intent: yes, goto: done}
              - {intent: no, goto: end}
        """), agent="test")
    assert [r.trigger.intent for r in policy.dialogues[0].entry.listen if r.trigger] == ["yes", "no"]


def test_a_missing_file_is_one_problem(tmp_path: Path) -> None:
    (problem,) = check_policy(tmp_path / "none.yaml")
    assert "cannot read" in problem.message


def test_cli_policy_check(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "policy.yaml").write_text(README, encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dialogues:\n  - id: a\n    trigger: hi\n    actions: [{type: shout}]\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(cli, ["policy", "check", str(good)], obj={})
    assert result.exit_code == 0, result.output
    assert f"OK {good / 'policy.yaml'} (agent good: 1 dialogues, 1 nodes)" in result.output
    result = runner.invoke(cli, ["policy", "check", str(good), str(bad)], obj={})
    assert result.exit_code == 1
    assert f"{bad}:4: " in result.output and "unknown action type 'shout'" in result.output
