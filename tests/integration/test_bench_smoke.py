"""The bus benchmark still runs (tiny sizes, no timing asserted: figures come from `python -m bench...`)."""

from __future__ import annotations

import asyncio

import pytest

from bench.bus_throughput import run_all
from infra.config import Settings

pytestmark = pytest.mark.integration


async def test_bus_benchmark_runs_with_both_clients(stack: Settings) -> None:
    figures = await asyncio.to_thread(run_all, stack.bootstrap_servers, ["aiokafka", "confluent"], 300, 3)
    seen = {(f.client, f.config, f.metric, f.unit) for f in figures}
    for client in ("aiokafka", "confluent-kafka"):
        for config in ("default", "tuned"):
            assert (client, config, "produce-to-consume", "msg/s") in seen
            assert (client, config, "round trip p99", "ms") in seen
    assert all(f.value > 0 for f in figures)
