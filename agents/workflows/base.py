"""What every executor shares: the `BaseExecutor` contract and the lookup of a callable by import path."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from agents.workflows.errors import PermanentError

__all__ = ["BaseExecutor", "resolve", "upstream"]


class BaseExecutor:
    """Subclass and implement `execute(params)` (sync or async); return a JSON-able value, the task's output.

    Raise `TransientError` for a failure that may pass and `PermanentError` for one that will not; any other
    exception counts as permanent unless the task's `retry_on` names its type. `required_params` are checked when a
    workflow loads, so a missing one is reported with the file and line instead of failing at run time.
    """

    required_params: ClassVar[tuple[str, ...]] = ()

    def execute(self, params: Mapping[str, Any]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement execute(params)")

    def defaults(self, task: str, depends_on: Sequence[str]) -> Mapping[str, Any]:
        """Params (templates over the run's scope) a task of this executor gets unless it sets them itself.

        This is how `Task("store", executor="s3_uploader", depends_on=[transform])` needs no params: the uploader
        takes its dependency's output as `data`. The run processor merges them into the definition a run starts
        with, so they are rendered and recorded like any param.
        """
        return {}


def upstream(depends_on: Sequence[str]) -> Any:
    """A template for the output of a task's dependencies: the one output, or a mapping of each by name."""
    if len(depends_on) == 1:
        return f"{{{{tasks.{depends_on[0]}.output}}}}"
    return {name: f"{{{{tasks.{name}.output}}}}" for name in depends_on}


def resolve(path: str, who: str = "python executor") -> Any:
    """The object at `module:attribute` (dots allowed after the colon)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise PermanentError(f"{who}: function {path!r} must look like 'package.module:name'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PermanentError(f"{who}: cannot import {module_name!r} ({exc}); install the package that "
                             "provides it on the workers") from exc
    for part in attribute.split("."):
        if part.startswith("_"):
            raise PermanentError(f"{who}: {path!r} names a private attribute; expose a public function")
        try:
            target = getattr(target, part)
        except AttributeError:
            raise PermanentError(f"{who}: {module_name} has no {attribute!r}; check the name") from None
    if not callable(target):
        raise PermanentError(f"{who}: {path!r} is not callable")
    return target
