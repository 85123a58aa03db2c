"""The queue between requests and an engine: admission, dynamic batching, drain.

It knows nothing of HTTP. Requests are admitted whole or refused whole (QueueFull): by time
(admission.py: the estimated work ahead must fit max_queue_seconds) and by memory (never more
than max_queue_inputs). Merging engines get token-budgeted batches of items of similar length,
always including the oldest waiting item so nothing starves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np

from embedstack.core.admission import Admission
from embedstack.core.embedding_cache import CachedVector, EmbeddingCache, cache_key
from embedstack.core.metrics import Metrics
from embedstack.engines import Engine, Input, Item, Output
from embedstack.errors import QueueFull, Unavailable

# The name before core/ existed: operators filter the journal on it.
log = logging.getLogger("embedstack.batcher")

# How many of the oldest waiting items a batch is chosen from.
_WINDOW = 1024
# Truncations logged per minute and model; /metrics counts all of them.
_TRUNCATION_LOGS_PER_MINUTE = 5


@dataclass(slots=True)
class _Entry:
    item: Item
    future: asyncio.Future
    request: list[_Entry]  # every entry of the same request, this one included
    tenant: object = None


@dataclass(slots=True)
class Result:
    vectors: np.ndarray
    prompt_tokens: int


@dataclass(slots=True)
class _Computed:
    vectors: np.ndarray
    input_tokens: list[int]  # per input where the engine knows them, else per item
    cacheable: bool  # every output said it is exactly what its cache key names

    @property
    def prompt_tokens(self) -> int:
        return sum(self.input_tokens)


class Batcher:
    def __init__(
        self,
        engine: Engine,
        *,
        max_batch_tokens: int,
        max_wait_ms: float,
        max_queue_inputs: int,
        max_queue_seconds: float,
        metrics: Metrics,
        max_hold_seconds: float = 0.0,
        cache: EmbeddingCache | None = None,
    ):
        self.engine = engine
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue_inputs = max_queue_inputs
        self.admission = Admission(max_queue_seconds, max_hold_seconds)
        self.cache = cache  # shared by every model: the engine's fingerprint is part of each key
        self.metrics = metrics
        self.queued_inputs = 0  # admitted and not yet answered
        self.draining = False
        self._pending: list[_Entry] = []
        self._anchored: dict[object, int] = {}  # each tenant's last anchored batch
        self._batches_taken = 0
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(engine.concurrency)
        self._running: dict[asyncio.Task, list[_Entry]] = {}
        self._loop_task: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._label = metrics.queue_depth.labels(engine.spec.id)
        # Read when /metrics is scraped, so they are never stale.
        metrics.queue_seconds.labels(engine.spec.id).set_function(lambda: self.admission.backlog_seconds() or 0.0)
        metrics.throughput.labels(engine.spec.id).set_function(lambda: self.admission.rate or 0.0)
        self._truncation_log_window = (0.0, 0)  # (minute started, lines logged in it)

    def start(self) -> None:
        """Serve from the loaded engine; admission starts from its warm-up throughput, if it measured one."""
        self.admission.rate = self.engine.startup_rate()
        self._loop_task = asyncio.create_task(self._loop(), name=f"batcher-{self.engine.spec.id}")

    async def embed(
        self, inputs: list[Input], *, truncate: bool, input_type: str, key: object = None, tenant: str | None = None
    ) -> Result:
        """Embed one request's inputs. `key` names the request's content, so a retry is known again;
        `tenant` (the API key that matched, or a client address on an open gateway) is whose turn it is
        when requests wait in line, and keys the cache when it is kept per tenant."""
        if self.draining:
            raise Unavailable("the service is draining; retry on another instance", code="draining")
        fingerprint = self.engine.cache_fingerprint(truncate, input_type) if self.cache is not None else None
        if fingerprint and self.cache is not None:
            fingerprint = self.cache.scoped(fingerprint, tenant)
        keys = [cache_key(fingerprint, x) for x in inputs] if fingerprint else []
        found = await self.cache.get_many(keys) if keys else [None] * len(inputs)
        missing = [i for i, hit in enumerate(found) if hit is None]
        if missing:
            computed = await self._embed_missing([inputs[i] for i in missing], truncate, input_type, key, tenant)
            # Only answers exactly of their key, and per input (engines with a fingerprint answer so)
            if keys and computed.cacheable and len(computed.input_tokens) == len(missing):
                rows = [CachedVector(computed.vectors[j], tokens) for j, tokens in enumerate(computed.input_tokens)]
                await self.cache.put_many([(keys[i], row) for i, row in zip(missing, rows, strict=True)])
            if len(missing) == len(inputs):
                return Result(vectors=computed.vectors, prompt_tokens=computed.prompt_tokens)
        vectors = np.empty((len(inputs), self.engine.spec.dimension), dtype=np.float32)
        tokens = 0
        for i, hit in enumerate(found):
            if hit is not None:
                vectors[i] = hit.vector
                tokens += hit.tokens
        if missing:
            vectors[missing] = computed.vectors
            tokens += computed.prompt_tokens
        return Result(vectors=vectors, prompt_tokens=tokens)

    async def _embed_missing(
        self, inputs: list[Input], truncate: bool, input_type: str, key: object, tenant: object
    ) -> _Computed:
        n = len(inputs)
        if self.queued_inputs + n > self.max_queue_inputs:
            share = (self.queued_inputs + n - self.max_queue_inputs) / max(1, self.queued_inputs)
            raise QueueFull(
                f"the queue is full ({self.queued_inputs} of {self.max_queue_inputs} inputs waiting); retry later",
                retry_after=self.admission.retry_after_share(share),
            )
        self._count_queued(n)
        # Admitted on an estimate, before the tokenizer: a request that will be refused costs no
        # time on the inference thread. The estimate becomes the real cost once tokenized.
        admitted = self.engine.estimate_cost(inputs, input_type)
        try:
            await self.admission.acquire(admitted, key, tenant)
        except BaseException:
            self._count_queued(-n)
            raise
        try:
            items = await self.engine.prepare(inputs, truncate=truncate, input_type=input_type)
            cost = sum(item.cost for item in items)
            self.admission.adjust(cost - admitted)
            admitted = cost
            self._count_truncated(items)
            loop = asyncio.get_running_loop()
            entries: list[_Entry] = []
            entries.extend(_Entry(item, loop.create_future(), entries, tenant) for item in items)
            self._pending.extend(entries)
            self._wakeup.set()
            outputs: list[Output] = await asyncio.gather(*(e.future for e in entries))
        finally:
            self._count_queued(-n)
            self.admission.release(admitted)
        vectors = outputs[0].vectors if len(outputs) == 1 else np.concatenate([o.vectors for o in outputs])
        return _Computed(
            vectors, [n for o in outputs for n in (o.input_tokens or [o.tokens])], all(o.cacheable for o in outputs)
        )

    def _count_queued(self, delta: int) -> None:
        """Admission adds a request's inputs, its answer (or failure) takes them off again."""
        self.queued_inputs += delta
        self._label.set(self.queued_inputs)
        if self.queued_inputs:
            self._idle.clear()
        else:
            self._idle.set()

    def _count_truncated(self, items: list[Item]) -> None:
        truncated = sum(item.truncated for item in items)
        if not truncated:
            return
        spec = self.engine.spec
        self.metrics.truncated.labels(spec.id).inc(truncated)
        now = time.monotonic()
        started, logged = self._truncation_log_window
        if now - started >= 60:
            started, logged = now, 0
        if logged < _TRUNCATION_LOGS_PER_MINUTE:
            log.info(
                "%d of %d inputs to %s were longer than its %d tokens: only their start was embedded "
                "(embedstack_truncated_inputs_total counts all; send shorter chunks to embed them whole)",
                truncated,
                sum(item.inputs for item in items),
                spec.id,
                spec.max_tokens,
            )
            logged += 1
        self._truncation_log_window = (started, logged)

    async def drain(self, deadline: float) -> bool:
        """Refuse new work, let admitted work finish until `deadline` (monotonic); True if all did."""
        self.draining = True
        self.admission.drain()  # held requests are answered 503 at once: they were never admitted
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

    def _anchor(self) -> int:
        """Where in the queue the next batch's anchor is: the oldest input of the tenant whose turn it
        is (the one anchored longest ago), so a tenant's backlog does not stand before another's
        first request: a search query waits one batch, not the other tenant's whole re-index."""
        first: dict[object, int] = {}
        for i, entry in enumerate(self._pending):
            first.setdefault(entry.tenant, i)
        if len(first) == 1:
            return 0
        tenant = min(first, key=lambda t: (self._anchored.get(t, -1), first[t]))
        self._batches_taken += 1
        self._anchored[tenant] = self._batches_taken
        if len(self._anchored) > 4 * len(first) + 64:  # tenants with nothing queued are forgotten
            self._anchored = {t: n for t, n in self._anchored.items() if t in first}
        return first[tenant]

    def _take_batch(self) -> list[_Entry]:
        self._pending = [e for e in self._pending if not e.future.done()]  # callers that went away
        if not self._pending:
            return []
        self._pending.insert(0, self._pending.pop(self._anchor()))
        if not self.engine.merges:
            return [self._pending.pop(0)]
        window = self._pending[:_WINDOW]
        order = sorted(range(len(window)), key=lambda i: window[i].item.cost)
        cost = [window[i].item.cost for i in order]
        lo = hi = order.index(0)  # the anchor is always in the batch

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
        self.admission.batch_started()
        done = 0
        try:
            self.metrics.batch_size.labels(spec_id).observe(sum(e.item.inputs for e in batch))
            try:
                outputs = await self.engine.run([e.item for e in batch])
                done = sum(e.item.cost for e in batch)
            except Exception as exc:  # the engine's error belongs to the requests in this batch
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(exc)
                    # The request has failed: its inputs still queued are dropped, not embedded for nobody.
                    for sibling in entry.request:
                        sibling.future.cancel()
                return
            for entry, output in zip(batch, outputs, strict=True):
                self.metrics.tokens.labels(spec_id).inc(output.tokens)
                if not entry.future.done():
                    entry.future.set_result(output)
        finally:
            self.admission.batch_finished(done)
            self._slots.release()
