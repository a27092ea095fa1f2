"""Faust's aiokafka transport with the consumer's fetch wait taken from settings, Faust's consumer fixes, and
commits that survive a broker whose storage is briefly unavailable.

faust-streaming 0.15.3 hard-codes `fetch_max_wait_ms=1500` for worker consumers. On Tansu, which does not wake a
waiting fetch when data arrives, that is up to 1.5 s of latency per hop. The consumer also carries the fixes in
`streams.faust_fixes` (lost input messages when a rebalance meets a Table's recovery) and `streams.aiokafka_fixes`
(no heartbeat while the rebalance callback runs, so a slow callback got the member thrown out), and asks for a
longer fetch wait while it is behind (`infra.bus.fetch_wait`: Tansu on S3 starves a short one) and leaves its group
when it stops also in Tansu's first generation (`infra.bus.group_leave`). Registered as the
`switchboard://` broker scheme through the `faust.transports` entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from time import monotonic
from typing import Any

from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    UnknownError,
)
from aiokafka.structs import OffsetAndMetadata
from faust.transport.drivers import aiokafka as faust_aiokafka

from infra.bus import fetch_wait, group_leave
from streams import aiokafka_fixes, faust_fixes, predecessor

DEFAULT_FETCH_MAX_WAIT_MS = 500
# What a commit raises while the broker cannot reach its storage (Tansu on S3 with object storage down).
_STORAGE_UNAVAILABLE = (UnknownError, RequestTimedOutError, KafkaTimeoutError, KafkaConnectionError, NodeNotReadyError)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def on_start(self) -> None:
        """Before joining the group, remove a killed predecessor of this worker from it (`streams.predecessor`)."""
        settings = getattr(self.app, "switchboard_settings", None)
        if settings is not None:
            # Before the consumer starts: its fetcher takes the limits when it first fetches.
            fetch_wait.install(settings.kafka.fetch_catch_up_wait_ms, settings.kafka.fetch_catch_up_max_wait_ms)
            await predecessor.remove_dead_predecessor(settings, Path(self.app.conf.datadir), self.app.conf.id)
        await super().on_start()

    async def on_thread_stop(self) -> None:
        await super().on_thread_stop()  # stops the consumer, which leaves the group itself
        try:
            predecessor.forget(Path(self.app.conf.datadir))
        except OSError as exc:
            self.log.warning("could not remove this worker's group member record (%r)", exc)

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        # Recorded on every assignment: a member that was expired and rejoined has a new id.
        member_id = self._ensure_consumer()._coordinator.member_id  # aiokafka keeps it there only
        try:
            predecessor.record(Path(self.app.conf.datadir), self.app.conf.id, member_id)
        except OSError as exc:
            self.log.warning("could not record this worker's group member id (%r); after a kill its successor "
                             "waits for the session to expire", exc)
        await super().on_partitions_assigned(assigned, generation_id)

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher; set before start.
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS)
        return consumer

    async def _commit(self, offsets: Mapping[Any, int]) -> bool:
        """Faust's commit, except that a broker that cannot store offsets right now does not stop the worker.

        Tansu keeps committed offsets on S3: while object storage is down, OffsetCommit fails with UnknownError
        (or times out), and stock Faust crashes the worker on any commit error. The offsets stay uncommitted and
        the next commit carries them again; until then a crash only means redelivery (at-least-once).
        """
        consumer = self._ensure_consumer()
        committable = {tp: offset for tp, offset in offsets.items() if tp in self.assignment()}
        try:
            self.tp_last_committed_at.update({tp: monotonic() for tp in committable})
            await consumer.commit({faust_aiokafka.ensure_aiokafka_TP(tp): OffsetAndMetadata(offset, "")
                                   for tp, offset in committable.items()})
        except _STORAGE_UNAVAILABLE as exc:
            self.log.warning("Committing offsets failed (%r); they stay uncommitted and are committed with the "
                             "next commit", exc)
            return False
        except Exception:
            # Anything else (a rebalance, a bad state) as stock Faust handles it: commit again through it.
            return bool(await super()._commit(offsets))
        return True

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
        aiokafka_fixes.apply()  # heartbeats while Faust's rebalance callback runs
        group_leave.install()  # leaves the group on stop also in Tansu's generation 0
        super().__init__(*args, **kwargs)

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
