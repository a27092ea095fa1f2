"""A user's own intents deployment for Switchboard: a Ray Serve application that keeps the contract of
`serving.intents_app` (docs/serving.md, "Your own intents deployment"). Here the "model" is a table of keywords per
agent and intent; put your own model in `RuleIntents.__init__` (load it from a local folder) and `_answer`.

Deploy it on the Ray the workers reach, then point Switchboard at it:

    serve run --address ray://head:10001 --non-blocking --name my-intents \
        examples.rule_intents:build_app rules=/path/to/rules.json            # or, in Python:
    serve.run(rules_app(RULES), name="my-intents", route_prefix=None)
    SWITCHBOARD_SERVING__INTENTS_APP=my-intents switchboard up

`rules.json`: {"agent": {"intent": ["keyword", ...]}}. The Ray nodes must be able to import this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray import serve

from serving.binding import bind_replica_grpc_to_node_ip

bind_replica_grpc_to_node_ip()  # optional: Ray Serve's replica gRPC server on the node's IP, not every interface
#: agent -> intent -> keywords (a text that contains one of them has that intent)
RULES: dict[str, dict[str, list[str]]] = {
    "helpdesk": {"printer": ["printer", "toner", "paper jam"], "password": ["password", "locked out"]},
    "customer_service": {"order_status": ["parcel", "order", "delivery"], "goodbye": ["bye", "thanks"]},
}


class RuleIntents:
    """Answers `recognise(pairs)`: one dict per (agent, text) pair, in order (the contract Switchboard checks)."""

    def __init__(self, rules: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        self.rules = {agent: {intent: [word.casefold() for word in words] for intent, words in intents.items()}
                      for agent, intents in rules.items()}

    async def recognise(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        return [self._answer(str(agent), str(text)) for agent, text in pairs]

    def _answer(self, agent: str, text: str) -> dict[str, Any]:
        if agent not in self.rules:
            return {"error": f"rule_intents has no rules for agent {agent!r}: add them to its rules file"}
        folded = text.casefold()
        hits = [intent for intent, words in self.rules[agent].items() if any(word in folded for word in words)]
        if not hits:  # no intent: the policy's patterns decide, as with Switchboard's own model
            return {"intent": None, "confidence": 0.0, "model": "rule-intents"}
        return {"intent": hits[0], "confidence": 1.0 / len(hits),
                "alternatives": [[intent, 1.0 / len(hits)] for intent in hits[1:]], "model": "rule-intents"}


RuleIntentsDeployment: Any = serve.deployment(name="rule_intents", ray_actor_options={"num_cpus": 0.1})(RuleIntents)


def rules_app(rules: Mapping[str, Mapping[str, Sequence[str]]] = RULES) -> Any:
    """The bound application, for `serve.run(rules_app(...), name=...)`."""
    return RuleIntentsDeployment.bind({agent: dict(intents) for agent, intents in rules.items()})


def build_app(args: Mapping[str, str]) -> Any:
    """`serve run examples.rule_intents:build_app rules=FILE`: the rules from a JSON file (default: `RULES`)."""
    path = args.get("rules")
    return rules_app(json.loads(Path(path).read_text(encoding="utf-8")) if path else RULES)
