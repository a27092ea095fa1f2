"""The shipped agents' recogniser data: sentences route to the intent a person means.

The keyword recogniser picks the intent whose example matches the most text, so a negation ("does not", "won't")
must not outweigh the topic of a complaint, and an answer with thanks ("it did, thanks") is still an answer.
"""

from __future__ import annotations

import pytest

from agents.dialogue.recognise import KeywordRecogniser
from agents.registry import discover_agents

RECOGNISERS = {agent.name: KeywordRecogniser(agent.policy) for agent in discover_agents()}

HELPDESK = [
    # a complaint names its topic, whatever the negation in it
    ("my VPN does not connect", "vpn"),
    ("my vpn won't connect", "vpn"),
    ("the VPN isn't working", "vpn"),
    ("I can't connect to the VPN", "vpn"),
    ("I cannot access the company vpn", "vpn"),
    ("remote access is broken", "vpn"),
    ("my password doesn't work", "password"),
    ("my password is not accepted", "password"),
    ("I don't remember my password", "password"),
    ("I cannot log in", "password"),
    ("the printer won't print", "printer"),
    ("I can't print", "printer"),
    ("PRN-204 isn't working", "printer"),
    ("it's not printing", "printer"),
    # answers: no
    ("no", "deny"),
    ("not really", "deny"),
    ("not yet", "deny"),
    ("it won't", "deny"),
    ("it won't connect", "deny"),
    ("it isn't working", "deny"),
    ("it isn't", "deny"),
    ("it's still not working", "deny"),
    ("it does not connect", "deny"),
    ("it did not", "deny"),
    ("no, it still doesn't", "deny"),
    ("still won't connect", "deny"),
    ("I still can't", "deny"),
    ("nothing worked", "deny"),
    ("no luck", "deny"),
    ("I can't open it without the VPN", "deny"),
    ("no, not even without the vpn", "deny"),
    # answers: yes, with or without thanks
    ("yes", "affirm"),
    ("it did", "affirm"),
    ("it did, thanks", "affirm"),
    ("yes thanks", "affirm"),
    ("thank you, it works now", "affirm"),
    ("it connects now", "affirm"),
    # closing
    ("thanks", "thanks"),
    ("thanks, bye", "thanks"),
    ("no thanks, that's all", "thanks"),
]


@pytest.mark.parametrize(("text", "intent"), HELPDESK)
def test_helpdesk_intents(text: str, intent: str) -> None:
    assert RECOGNISERS["helpdesk"].recognise_now(text).intent == intent


@pytest.mark.parametrize("text", ["printer PRN-204 jams", "printer prn-204 jams", "Prn-204"])
def test_helpdesk_printer_ids_in_any_case(text: str) -> None:
    entities = RECOGNISERS["helpdesk"].recognise_now(text).entities
    assert [(e.name, e.value.upper()) for e in entities] == [("printer", "PRN-204")]


def test_customer_service_problem_from_the_opening_sentence() -> None:
    understood = RECOGNISERS["customer_service"].recognise_now("I want to report a problem: my parcel arrived broken")
    assert understood.intent == "ticket"
    assert [(e.name, e.value) for e in understood.entities] == [("problem", "my parcel arrived broken")]
    assert not RECOGNISERS["customer_service"].recognise_now("My blender is broken").entities
