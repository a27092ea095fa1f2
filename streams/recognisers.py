"""The worker's side of the served recognisers' shared cache: started with the Faust app, closed when it stops."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import faust
from mode import Service

from agents.dialogue.processor import RecogniserStage
from serving.recogniser import ServedRecogniser
from serving.shared_cache import SharedAnswerCache
from topics.processor import Processor, StatefulProcessor


class SharedCacheService(Service):
    """Mirrors `serving.answers` while the worker runs, and asks the model server which model it serves."""

    def __init__(self, cache: SharedAnswerCache, recognisers: Sequence[ServedRecogniser]) -> None:
        super().__init__()
        self.cache = cache
        self.recognisers = list(recognisers)
        self.identifying: list[asyncio.Future[None]] = []  # done once each client has asked

    async def on_start(self) -> None:
        await self.cache.start()
        clients = {id(recogniser.client): recogniser.client for recogniser in self.recognisers}
        for client in clients.values():  # in the background: connecting to Ray may take a while
            self.identifying.append(self.add_future(client.identify()))

    async def on_stop(self) -> None:
        await self.cache.close()


def shared_caches(processors: Sequence[Processor | StatefulProcessor]) -> dict[int, SharedCacheService]:
    """A service per shared cache the processors' served recognisers use."""
    found: dict[int, list[ServedRecogniser]] = {}
    caches: dict[int, SharedAnswerCache] = {}
    for processor in processors:
        if not isinstance(processor, RecogniserStage):
            continue
        for recogniser in processor.recognisers.values():
            if isinstance(recogniser, ServedRecogniser) and recogniser.shared is not None:
                caches[id(recogniser.shared)] = recogniser.shared
                found.setdefault(id(recogniser.shared), []).append(recogniser)
    return {key: SharedCacheService(caches[key], found[key]) for key in caches}


def run_shared_caches(app: faust.App, processors: Sequence[Processor | StatefulProcessor]) -> None:
    """Start every shared cache of `processors` with `app`, and close it when the app stops."""
    for service in shared_caches(processors).values():
        app.add_dependency(service)
