"""Dynamic micro-batching: inputs of concurrent requests share one engine call.

Each request puts its inputs on a bounded queue and awaits their results. One worker takes the first
waiting input, gathers more for up to `max_wait_ms` or until `max_batch`, and runs them as one mixed-task
batch in a thread, so the event loop keeps accepting requests meanwhile. Routing decisions asked alone
(`/v1/route`) wait in the same queue and are made together, one engine call for those of a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

from mtlora.engine import Engine
from mtlora.engine.inputs import naming_input
from mtlora.server.metrics import Metrics
from mtlora.server.settings import ServerSettings


class QueueFull(Exception):
    """The queue holds `max_queue` inputs already; the client should retry later."""


@dataclass
class _Pending:
    item: Any
    task: str | None
    router: str | None
    future: asyncio.Future = field(repr=False)
    route_only: bool = False  # the routing decision is wanted, not the answer


class MicroBatcher:
    def __init__(self, engine: Engine, settings: ServerSettings, metrics: Metrics):
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=settings.max_queue)
        self._worker: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        await self.queue.join()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def submit(self, items: list[Any], tasks: list[str | None], router: str | None,
                     route_only: bool = False) -> list[Any]:
        """Queue a request's inputs (all or none) and wait for their answers, or with `route_only` for
        their routing decisions (`Engine.route`)."""
        loop = asyncio.get_running_loop()
        if self.queue.qsize() + len(items) > self.settings.max_queue:
            raise QueueFull
        pending = [_Pending(item, task, router, loop.create_future(), route_only)
                   for item, task in zip(items, tasks, strict=True)]
        for entry in pending:
            self.queue.put_nowait(entry)
        self.metrics.queue_depth.set(self.queue.qsize())
        answers = await asyncio.gather(*(entry.future for entry in pending), return_exceptions=True)
        for index, answer in enumerate(answers):
            if isinstance(answer, BaseException):
                with naming_input(index, len(answers)):  # say which of the request's inputs
                    raise answer
        return cast(list[Any], answers)  # every exception among them was raised above

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            self._take_waiting(batch)
            deadline = time.perf_counter() + self.settings.max_wait_ms / 1000
            while len(batch) < self.settings.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
                self._take_waiting(batch)
            self.metrics.queue_depth.set(self.queue.qsize())
            live = [entry for entry in batch if not entry.future.done()]  # a client that hung up cancelled its own
            try:
                if live:
                    await asyncio.to_thread(self._answer, live)
            finally:
                for _ in batch:
                    self.queue.task_done()

    def _take_waiting(self, batch: list[_Pending]) -> None:
        """Add what is queued already, up to `max_batch`: under load the queue refills while the engine
        runs, and taking it whole costs no timer per input."""
        while len(batch) < self.settings.max_batch and not self.queue.empty():
            batch.append(self.queue.get_nowait())

    def _answer(self, batch: list[_Pending]) -> None:
        by_call: dict[tuple[bool, str | None], list[_Pending]] = defaultdict(list)
        for entry in batch:
            by_call[entry.route_only, entry.router].append(entry)
        for (_, router), entries in by_call.items():
            self._answer_together(entries, router)

    def _engine_call(self, entries: list[_Pending], router: str | None) -> list[Any]:
        items = [entry.item for entry in entries]
        if entries[0].route_only:
            return self.engine.route(items, router)
        return self.engine.predict_batch(items, [entry.task for entry in entries], router)

    def _answer_together(self, entries: list[_Pending], router: str | None) -> None:
        """One engine call for `entries`. One bad input must not fail its neighbours (nor, by escaping,
        stop the worker and leave every later request waiting): a failed call is split in halves until
        the inputs that fail stand alone, a few calls per bad input rather than one per input."""
        # Observed per engine call, as its help says: a batch of several routers, or one split around a bad
        # input, takes several.
        self.metrics.batch_size.observe(len(entries))
        if len(entries) == 1:
            entry = entries[0]
            self._settle(entry, lambda: self._engine_call([entry], router)[0])
            return
        try:
            results = self._engine_call(entries, router)
        except BaseException:  # a tokenizer's Rust panic is a BaseException
            results = None  # split below, outside the handler, so the error and its frames can go
        if results is None:
            middle = len(entries) // 2
            self._answer_together(entries[:middle], router)
            self._answer_together(entries[middle:], router)
            return
        for entry, result in zip(entries, results, strict=True):
            self._settle(entry, lambda r=result: r)

    def _settle(self, entry: _Pending, compute: Any) -> None:
        # From the engine thread, as each result is ready, so the loop mostly writes the answers before
        # the next engine call starts. Settling them on the loop once the call had returned started the
        # next call first, and the two then fought over the GIL and both cores: 78 against 109
        # requests/s at 64 clients, the two versions served side by side.
        loop = entry.future.get_loop()
        try:
            result = compute()
        except Exception as error:
            loop.call_soon_threadsafe(_set, entry.future, None, error)
        except BaseException as error:  # a Rust panic: this input fails, the worker goes on
            failure = RuntimeError(f"the engine failed on this input: {type(error).__name__}: {error}")
            loop.call_soon_threadsafe(_set, entry.future, None, failure)
        else:
            loop.call_soon_threadsafe(_set, entry.future, result, None)


def _set(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
