"""Which agents exist: every folder with a `policy.yaml` under `agents/` (and under the deployment's extra agent
folders, `workers.agent_dirs`) is a dialogue agent.

An agent folder may also be a Python package whose `WORKFLOWS` maps workflow names to functions, which workers run
on the workflow engine. Loading validates every policy up front, so a worker never starts with a broken one.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agents.dialogue.errors import DialogueError
from agents.dialogue.loader import discover_policies, load_policy
from agents.dialogue.model import Policy
from agents.dialogue.recognise import Recogniser
from agents.dialogue.retrieval import Retriever
from agents.inline_workflows import WorkflowFunction
from agents.workflows.model import Task, Where, Workflow
from infra.config import Settings
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
    return AgentPackage(policy, folder, _workflows_of(folder))


def _workflows_of(folder: Path) -> dict[str, WorkflowFunction]:
    """The `WORKFLOWS` of an agent folder that is a Python package (built in, or from an extra agent folder)."""
    init = folder / "__init__.py"
    if not init.exists():
        return {}
    if folder.parent == AGENTS_DIR:
        module = importlib.import_module(f"agents.{folder.name}")
    else:
        name = f"switchboard_agent_{folder.name}"
        module = sys.modules.get(name)  # type: ignore[assignment]
        if module is None or getattr(module, "__file__", None) != str(init):
            spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
            if spec is None or spec.loader is None:  # pragma: no cover - a file location always has a loader
                raise DialogueError(f"cannot import {init}; check that it is a Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    return dict(getattr(module, "WORKFLOWS", {}))


def agent_roots(settings: Settings | None = None) -> tuple[Path, ...]:
    """The folders that hold agents: the built-in `agents/`, then the deployment's `workers.agent_dirs`."""
    extra = tuple(settings.workers.agent_dirs) if settings is not None else ()
    return (AGENTS_DIR, *(Path(root) for root in extra if Path(root).resolve() != AGENTS_DIR))


def discover_agents(*roots: Path) -> list[AgentPackage]:
    """Every dialogue agent under `roots` (default: the built-in `agents/`); raises PolicyError listing every problem,
    and DialogueError when two folders declare the same agent."""
    found: list[AgentPackage] = []
    seen: dict[str, Path] = {}
    for root in roots or (AGENTS_DIR,):
        if not Path(root).is_dir():
            raise DialogueError(f"agent folder {root} does not exist; fix workers.agent_dirs "
                                "(SWITCHBOARD_WORKERS__AGENT_DIRS)")
        for path in discover_policies(root):
            agent = load_agent(path.parent)
            if agent.name in seen:
                raise DialogueError(f"agent {agent.name!r} is declared twice, in {seen[agent.name]} and "
                                    f"{agent.folder}; rename one (the policy's `agent:`) or remove it")
            seen[agent.name] = agent.folder
            found.append(agent)
    return found


def deployment_agents(settings: Settings | None = None) -> list[AgentPackage]:
    """The agents a deployment runs: built-in ones and those in its extra agent folders."""
    return discover_agents(*agent_roots(settings))


def declared_topics(agents: Sequence[AgentPackage] | None = None) -> tuple[TopicSpec, ...]:
    """Every topic Switchboard uses: the catalog's, and each dialogue agent's own."""
    found = discover_agents() if agents is None else agents
    return catalog.ALL + tuple(spec for agent in found for spec in catalog.agent_topics(agent.name).all)


def agent_workflow_functions(agents: Sequence[AgentPackage]) -> dict[str, WorkflowFunction]:
    """Every agent's Python workflows (`WORKFLOWS`), by name; two agents may not ship different ones of a name."""
    workflows: dict[str, WorkflowFunction] = {}
    for agent in agents:
        for name, function in agent.workflows.items():
            if name in workflows and workflows[name] is not function:
                raise DialogueError(f"agents {agent.name} and another agent both ship a workflow named {name!r}; "
                                    "rename one of them")
            workflows[name] = function
    return workflows


def agent_engine_workflows(agents: Sequence[AgentPackage]) -> dict[str, Workflow]:
    """The agents' Python workflows as workflow-engine definitions: one `python` task that calls the function with
    the request's input. On the bus a dialogue's `call_workflow` then runs on the engine (durable run state,
    retries of transient errors, an audit trail, a task that succeeded never run twice), while stories and tests
    call the same function offline. A function raises `WorkflowFailed` for an expected failure (no such order):
    not retried; the run fails with its message."""
    found: dict[str, Workflow] = {}
    for name, function in agent_workflow_functions(agents).items():
        code = getattr(function, "__code__", None)
        where = Where(code.co_filename, code.co_firstlineno) if code is not None else Where()
        doc = (function.__doc__ or "").strip().splitlines()
        task = Task("run", "python", {"function": f"{function.__module__}:{function.__qualname__}",
                                      "args": ["{{input}}"]}, where=where)
        found[name] = Workflow(name, tasks=[task], description=doc[0] if doc else "", where=where)
    return found


def dialogue_processors(agents: Sequence[AgentPackage] | None = None, *,
                        engine_workflows: Collection[str] = (),
                        recognisers: Mapping[str, Recogniser] | None = None,
                        retrievers: Mapping[str, Retriever] | None = None,
                        recogniser_concurrency: int = 1,
                        inline: bool = True) -> list[Processor | StatefulProcessor]:
    """The processors that run the dialogue agents: the recogniser stage, one processor per agent, and (with
    `inline`) a runner for the agents' Python workflows on the stream itself; requests for `engine_workflows` are
    left to the workflow engine. A worker puts the agents' workflows on the engine (`agent_engine_workflows`) and
    passes `inline=False`.

    `recognisers` (agent -> recogniser) replaces the keyword recognisers, e.g. with served ones (serving/);
    `retrievers` add FAQ retrieval to the agents they name; `recogniser_concurrency` is how many turns the recogniser
    stage handles at once (for batched model calls)."""
    from agents.dialogue.processor import DialogueAgent, RecogniserStage, keyword_recognisers
    from agents.directory import directory_of
    from agents.inline_workflows import InlineWorkflowRunner

    found = discover_agents() if agents is None else agents
    policies = [agent.policy for agent in found]
    workflows = agent_workflow_functions(found)
    processors: list[Processor | StatefulProcessor] = [
        RecogniserStage(keyword_recognisers(policies) if recognisers is None else recognisers,
                        others=PYTHON_AGENTS, retrievers=retrievers, concurrency=recogniser_concurrency)]
    directory = directory_of(policies)  # whom `delegate` and `transfer` may address: the agents deployed together
    processors.extend(DialogueAgent(policy, directory) for policy in policies)
    clash = sorted(set(workflows) & set(engine_workflows)) if inline else []
    if clash:
        raise DialogueError(f"workflow(s) {', '.join(clash)} are both an agent's inline function (WORKFLOWS) and a "
                            "workflow-engine definition; rename or remove one of each")
    if inline:
        processors.append(InlineWorkflowRunner(workflows, others=engine_workflows))
    return processors
