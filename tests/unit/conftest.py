"""Unit tests run without servers and without the caller's SWITCHBOARD_* environment."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# Property tests check correctness, not speed: no per-example deadline, which a loaded CI machine would trip.
settings.register_profile("switchboard-unit", deadline=None)
settings.load_profile("switchboard-unit")


@pytest.fixture(autouse=True)
def _clean_switchboard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from SWITCHBOARD_* variables: none of the outer environment's may leak into a test."""
    for key in [k for k in os.environ if k.startswith("SWITCHBOARD_")]:
        monkeypatch.delenv(key)
