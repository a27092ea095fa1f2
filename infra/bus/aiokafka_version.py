"""The aiokafka versions the project's patches of aiokafka internals were written against, and the check each
patch makes before it installs itself (`infra.bus.fetch_wait`, `infra.bus.group_leave`, `streams.aiokafka_fixes`)."""

from __future__ import annotations

import aiokafka

AIOKAFKA_VERSIONS = ("0.14.",)


class AIOKafkaVersionError(RuntimeError):
    """The installed aiokafka is not a version a patch was written against."""


def check(patch: str, internals: str) -> None:
    """Refuse to install `patch` (a module name) on an aiokafka it was not written for; `internals`: what it
    replaces, for the message."""
    if not aiokafka.__version__.startswith(AIOKAFKA_VERSIONS):
        raise AIOKafkaVersionError(
            f"{patch} patches aiokafka {' or '.join(v + 'x' for v in AIOKAFKA_VERSIONS)} internals ({internals}), "
            f"but {aiokafka.__version__} is installed: pin aiokafka>=0.14,<0.15, or check the patch against the "
            "installed version before allowing it")
