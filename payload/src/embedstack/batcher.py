"""The queue between requests and an engine: admission, dynamic batching, drain.

It knows nothing of HTTP. Requests are admitted whole or refused whole (QueueFull), so the
queue never grows past max_queue_inputs. Merging engines get token-budgeted batches of items
of similar length, always including the oldest waiting item so nothing starves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np

from embedstack.engines import Engine, Input, Item, Output
from embedstack.errors import QueueFull, Unavailable
from embedstack.metrics import Metrics

log = logging.getLogger(__name__)

# How many of the oldest waiting items a batch is chosen from.
_WINDOW = 1024


@dataclass(slots=True)
class _Entry:
    item: Item
    future: asyncio.Future


@dataclass(slots=True)
class Result:
    vectors: np.ndarray
    prompt_tokens: int


class Batcher:
    def __init__(
        self,
        engine: Engine,
        *,
        max_batch_tokens: int,
        max_wait_ms: float,
        max_queue_inputs: int,
        metrics: Metrics,
    ):
        self.engine = engine
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue_inputs = max_queue_inputs
        self.metrics = metrics
        self.queued_inputs = 0  # admitted and not yet answered
        self.draining = False
        self._pending: list[_Entry] = []
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(engine.concurrency)
        self._running: dict[asyncio.Task, list[_Entry]] = {}
        self._loop_task: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._label = metrics.queue_depth.labels(engine.spec.id)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name=f"batcher-{self.engine.spec.id}")

    async def embed(self, inputs: list[Input], *, truncate: bool, input_type: str) -> Result:
        if self.draining:
            raise Unavailable("the service is draining; retry on another instance", code="draining")
        n = len(inputs)
        if self.queued_inputs + n > self.max_queue_inputs:
            raise QueueFull(
                f"the queue is full ({self.queued_inputs} of {self.max_queue_inputs} inputs waiting); retry later"
            )
        self._admit(n)
        try:
            items = await self.engine.prepare(inputs, truncate=truncate, input_type=input_type)
            loop = asyncio.get_running_loop()
            entries = [_Entry(item, loop.create_future()) for item in items]
            self._pending.extend(entries)
            self._wakeup.set()
            outputs: list[Output] = await asyncio.gather(*(e.future for e in entries))
        finally:
            self._admit(-n)
        vectors = outputs[0].vectors if len(outputs) == 1 else np.concatenate([o.vectors for o in outputs])
        return Result(vectors=vectors, prompt_tokens=sum(o.tokens for o in outputs))

    def _admit(self, n: int) -> None:
        self.queued_inputs += n
        self._label.set(self.queued_inputs)
        if self.queued_inputs:
            self._idle.clear()
        else:
            self._idle.set()

    async def drain(self, deadline: float) -> bool:
        """Refuse new work, let admitted work finish until `deadline` (monotonic); True if all did."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
            return True
        except TimeoutError:
            # Queued and running work alike is answered 503 with Retry-After, never cut off: the
            # server closes connections right after the drain, and a running upstream call to a
            # slow vLLM could otherwise outlive it.
            left, self._pending = self._pending, []
            running = [entry for batch in self._running.values() for entry in batch]
            for entry in left + running:
                if not entry.future.done():
                    entry.future.set_exception(
                        Unavailable("the service drained before this input was embedded", code="draining")
                    )
            for task in self._running:
                task.cancel()
            log.warning(
                "drain deadline reached with %d inputs queued and %d running; they were answered 503",
                sum(e.item.inputs for e in left),
                sum(e.item.inputs for e in running),
            )
            return False

    async def close(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        for task in list(self._running):
            task.cancel()
        await self.engine.close()

    async def _loop(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._slots.acquire()
            if self.engine.merges and self.max_wait and self._pending_cost() < self.max_batch_tokens:
                await asyncio.sleep(self.max_wait)  # let concurrent arrivals join this batch
            batch = self._take_batch()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._running[task] = batch
            task.add_done_callback(lambda done: self._running.pop(done, None))

    def _pending_cost(self) -> int:
        return sum(e.item.cost for e in self._pending[:_WINDOW])

    def _take_batch(self) -> list[_Entry]:
        self._pending = [e for e in self._pending if not e.future.done()]  # callers that went away
        if not self._pending:
            return []
        if not self.engine.merges:
            return [self._pending.pop(0)]
        window = self._pending[:_WINDOW]
        order = sorted(range(len(window)), key=lambda i: window[i].item.cost)
        cost = [window[i].item.cost for i in order]
        lo = hi = order.index(0)  # the oldest item is always in the batch

        def fits(lo: int, hi: int) -> bool:  # padded to the longest member
            return self.engine.batch_cost(hi - lo + 1, cost[hi]) <= self.max_batch_tokens

        while True:
            left = lo > 0 and fits(lo - 1, hi)
            right = hi + 1 < len(cost) and fits(lo, hi + 1)
            if not (left or right):
                break
            if right and (not left or cost[hi + 1] - cost[hi] <= cost[lo] - cost[lo - 1]):
                hi += 1
            else:
                lo -= 1
        chosen = {order[k] for k in range(lo, hi + 1)}
        batch = [window[i] for i in sorted(chosen)]
        self._pending = [e for i, e in enumerate(window) if i not in chosen] + self._pending[_WINDOW:]
        return batch

    async def _run(self, batch: list[_Entry]) -> None:
        spec_id = self.engine.spec.id
        try:
            self.metrics.batch_size.labels(spec_id).observe(sum(e.item.inputs for e in batch))
            try:
                outputs = await self.engine.run([e.item for e in batch])
            except Exception as exc:  # the engine's error belongs to the requests in this batch
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(exc)
                return
            for entry, output in zip(batch, outputs, strict=True):
                self.metrics.tokens.labels(spec_id).inc(output.tokens)
                if not entry.future.done():
                    entry.future.set_result(output)
        finally:
            self._slots.release()
