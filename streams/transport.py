"""Faust's aiokafka transport with the consumer's fetch wait taken from settings, and Faust's consumer fixes.

faust-streaming 0.15.3 hard-codes `fetch_max_wait_ms=1500` for worker consumers. On Tansu, which does not wake a
waiting fetch when data arrives, that is up to 1.5 s of latency per hop. The consumer also carries the fixes in
`streams.faust_fixes` (lost input messages when a rebalance meets a Table's recovery). Registered as the
`switchboard://` broker scheme through the `faust.transports` entry point.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

from streams import faust_fixes

DEFAULT_FETCH_MAX_WAIT_MS = 500


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher; set before start.
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS)
        return consumer

    async def _highwaters(self, partitions: list[Any]) -> Any:
        settings = getattr(self.app, "switchboard_settings", None)
        if settings is None or self.consumer.in_transaction:
            return await super()._highwaters(partitions)
        from streams.recovery_ends import true_highwaters

        return await true_highwaters(settings, partitions)


class Consumer(faust_fixes.ConsumerFixes, faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The consumer fixes come with the stream fix, and none of them runs on a Faust they were not written for.
        faust_fixes.apply()
        super().__init__(*args, **kwargs)

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
