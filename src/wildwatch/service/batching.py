"""Micro-batching: requests that arrive together share one model call."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from PIL import Image


@dataclass
class _Job:
    images: list[Image.Image]
    names: list[str]
    places: list
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MemoryBudget:
    """Bytes that decoding may hold at once, shared by every request: a decode waits until its
    bound fits (one larger than the whole budget runs alone)."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self.changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def acquire(self, cost: int) -> int:
        cost = min(cost, self.total)
        loop = asyncio.get_running_loop()
        changed = self.changed
        if changed is None or self._loop is not loop:  # a condition belongs to one event loop (a test client may use several)
            changed, self._loop = asyncio.Condition(), loop
            self.changed = changed
        async with changed:
            await changed.wait_for(lambda: self.used + cost <= self.total)
            self.used += cost
        return cost

    async def release(self, cost: int) -> None:
        changed = self.changed
        if changed is None:
            raise RuntimeError("release() without acquire()")
        async with changed:
            self.used -= cost
            changed.notify_all()


class MicroBatcher:
    """Collects images from concurrent requests for up to ``max_wait_ms`` (or ``max_batch`` images)
    and classifies them in one call on a worker thread."""

    def __init__(self, predictor, max_batch: int = 32, max_wait_ms: float = 5.0):
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue[_Job] | None = None
        self.task: asyncio.Task | None = None
        self.started_on: asyncio.AbstractEventLoop | None = None
        self.calls = 0
        self.images = 0

    async def start(self) -> asyncio.Queue[_Job]:
        queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.queue = queue
        self.task = asyncio.create_task(self._loop(queue))
        self.started_on = asyncio.get_running_loop()
        return queue

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()

    async def classify(self, images: list[Image.Image], names: list[str], places: list | None = None):
        queue = self.queue
        if queue is None or self.started_on is not asyncio.get_running_loop():
            queue = await self.start()  # first use, or another event loop (a test client without its lifespan)
        fut = asyncio.get_running_loop().create_future()
        await queue.put(_Job(images, names, places or [None] * len(images), fut))
        return await fut

    async def _loop(self, queue: asyncio.Queue[_Job]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await queue.get()]
            n = len(jobs[0].images)
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                n += len(job.images)
            images = [im for j in jobs for im in j.images]
            names = [nm for j in jobs for nm in j.names]
            places = [pl for j in jobs for pl in j.places]
            try:
                preds = await loop.run_in_executor(None, self.predictor.predict_images, images, names, places)
            except Exception as exc:  # noqa: BLE001 - whatever the model raised, every waiting request gets it
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            self.calls += 1
            self.images += len(images)
            i = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(preds[i:i + len(j.images)])
                i += len(j.images)
