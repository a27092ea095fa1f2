"""Which agents exist: every folder under `agents/` with a `policy.yaml` is a dialogue agent.

An agent folder may also be a Python package whose `WORKFLOWS` maps workflow names to functions (run inline until
the workflow engine lands). Loading validates every policy up front, so a worker never starts with a broken one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from agents.dialogue.errors import DialogueError
from agents.dialogue.loader import discover_policies, load_policy
from agents.dialogue.model import Policy
from agents.inline_workflows import WorkflowFunction
from topics import catalog
from topics.processor import Processor, StatefulProcessor
from topics.spec import TopicSpec

AGENTS_DIR = Path(__file__).resolve().parent
#: Agents written in Python that read `dialogue.turns` themselves.
PYTHON_AGENTS = ("echo",)


@dataclass(frozen=True)
class AgentPackage:
    """One dialogue agent: its policy and the workflows it ships."""

    policy: Policy
    folder: Path
    workflows: dict[str, WorkflowFunction] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.policy.agent


def load_agent(folder: Path) -> AgentPackage:
    policy = load_policy(folder / "policy.yaml")
    workflows: dict[str, WorkflowFunction] = {}
    if (folder / "__init__.py").exists() and folder.parent == AGENTS_DIR:
        module = importlib.import_module(f"agents.{folder.name}")
        workflows = dict(getattr(module, "WORKFLOWS", {}))
    return AgentPackage(policy, folder, workflows)


def discover_agents(root: Path = AGENTS_DIR) -> list[AgentPackage]:
    """Every dialogue agent under `root`, sorted by folder; raises PolicyError listing every problem."""
    return [load_agent(path.parent) for path in discover_policies(root)]


def declared_topics(agents: list[AgentPackage] | None = None) -> tuple[TopicSpec, ...]:
    """Every topic Switchboard uses: the catalog's, and each dialogue agent's own."""
    found = discover_agents() if agents is None else agents
    return catalog.ALL + tuple(spec for agent in found for spec in catalog.agent_topics(agent.name).all)


def dialogue_processors(agents: list[AgentPackage] | None = None) -> list[Processor | StatefulProcessor]:
    """The processors that run the dialogue agents: the recogniser stage, one processor per agent, and the inline
    workflows the agents ship."""
    from agents.dialogue.processor import DialogueAgent, RecogniserStage, keyword_recognisers
    from agents.inline_workflows import InlineWorkflowRunner

    found = discover_agents() if agents is None else agents
    policies = [agent.policy for agent in found]
    workflows: dict[str, WorkflowFunction] = {}
    for agent in found:
        for name, function in agent.workflows.items():
            if name in workflows and workflows[name] is not function:
                raise DialogueError(f"agents {agent.name} and another agent both ship a workflow named {name!r}; "
                                    "rename one of them")
            workflows[name] = function
    processors: list[Processor | StatefulProcessor] = [
        RecogniserStage(keyword_recognisers(policies), others=PYTHON_AGENTS)]
    processors.extend(DialogueAgent(policy) for policy in policies)
    processors.append(InlineWorkflowRunner(workflows))
    return processors
