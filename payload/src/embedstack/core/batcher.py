"""The queue between requests and an engine: admission, dynamic batching, drain.

It knows nothing of HTTP. Requests are admitted whole or refused whole (QueueFull): by time
(admission.py: the estimated work ahead must fit max_queue_seconds) and by memory (never more
than max_queue_inputs); admitted work is given back batch by batch as it is done. Merging engines
get token-budgeted batches of items of similar length, always including the oldest waiting item of
the tenant whose turn it is, so nothing starves. An engine that runs one batch at a time gets
batches of at most max_batch_seconds of work: a request that arrives behind one waits no longer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
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
# How long a tenant's engine work counts against its next turn, in seconds (an exponential memory).
_SERVICE_MEMORY_SECONDS = 10.0
# Truncations logged per minute and model; /metrics counts all of them.
_TRUNCATION_LOGS_PER_MINUTE = 5


@dataclass(slots=True)
class _Entry:
    item: Item
    future: asyncio.Future
    request: list[_Entry]  # every entry of the same request, this one included
    tenant: object = None
    released: bool = False  # its cost given back to admission


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
        max_batch_seconds: float = 0.0,
        drain_seconds: float = 0.0,
        cache: EmbeddingCache | None = None,
        service_factor: Callable[[object], float] = lambda tenant: 1.0,
    ):
        self.engine = engine
        self.service_factor = service_factor  # how many times a tenant's work counts (core/refusal_pacing.py)
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_seconds = max_batch_seconds
        self.max_wait = max_wait_ms / 1000
        self.max_queue_inputs = max_queue_inputs
        self.admission = Admission(max_queue_seconds, max_hold_seconds, max_total_seconds=drain_seconds)
        self.cache = cache  # shared by every model: the engine's fingerprint is part of each key
        self.metrics = metrics
        self.queued_inputs = 0  # admitted and not yet answered
        self.draining = False
        self._pending: list[_Entry] = []
        self._served: dict[object, tuple[float, float]] = {}  # each tenant's recent engine work: (cost, as of)
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
        entries: list[_Entry] = []
        try:
            items = await self.engine.prepare(inputs, truncate=truncate, input_type=input_type)
            cost = sum(item.cost for item in items)
            self.admission.adjust(cost - admitted, tenant)
            admitted = cost
            self._count_truncated(items)
            loop = asyncio.get_running_loop()
            entries.extend(_Entry(item, loop.create_future(), entries, tenant) for item in items)
            self._pending.extend(entries)
            self._wakeup.set()
            outputs: list[Output] = await asyncio.gather(*(e.future for e in entries))
        finally:
            self._count_queued(-n)
            # What the batches have not given back yet: inputs never run (a failure, a client gone).
            left = admitted - sum(e.item.cost for e in entries if e.released)
            for entry in entries:
                entry.released = True
            self.admission.release(left, tenant)
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
            if self.engine.merges and self.max_wait and self._pending_cost() < self._batch_budget():
                await asyncio.sleep(self.max_wait)  # let concurrent arrivals join this batch
            batch = self._take_batch()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._running[task] = batch
            task.add_done_callback(lambda done: self._running.pop(done, None))

    def _batch_budget(self) -> int:
        """Padded tokens for the next batch: max_batch_tokens, or where the engine runs one batch at a time,
        no more than max_batch_seconds of work at the measured rate (on a CPU a full batch takes seconds,
        and bigger batches are no faster there; on a GPU the token cap comes first)."""
        rate = self.admission.rate
        if self.engine.concurrency > 1 or not rate or not self.max_batch_seconds:
            return self.max_batch_tokens
        return max(1, min(self.max_batch_tokens, int(rate * self.max_batch_seconds)))

    def _pending_cost(self) -> int:
        return sum(e.item.cost for e in self._pending[:_WINDOW])

    def _anchor(self) -> int:
        """Where in the queue the next batch's anchor is: the oldest input of the tenant the engine served
        least lately (of equals, the one queued first), so a tenant's backlog does not stand before another's
        request: a search query waits for the batch running, not for turns of another tenant's re-index."""
        first: dict[object, int] = {}
        for i, entry in enumerate(self._pending):
            first.setdefault(entry.tenant, i)
        if len(first) == 1:
            return 0
        served, newcomer = self._service_levels(time.monotonic())
        # of equals, a newcomer first: it starts level with the least served, so it would lose every tie
        tenant = min(first, key=lambda t: (served.get(t, newcomer), t in served, first[t]))
        if len(self._served) > 4 * len(first) + 64:  # tenants with nothing queued are forgotten
            self._served = {t: v for t, v in self._served.items() if t in first}
        return first[tenant]

    def _service_levels(self, now: float) -> tuple[dict[object, float], float]:
        """Each known tenant's engine work, fading over _SERVICE_MEMORY_SECONDS, and where a tenant new to
        the engine starts: level with the one served least, not at nothing, or it would go before everyone
        until it had caught up with their past."""
        served = {t: cost * math.exp(-(now - at) / _SERVICE_MEMORY_SECONDS) for t, (cost, at) in self._served.items()}
        return served, min(served.values(), default=0.0)

    def _note_service(self, batch: list[_Entry]) -> None:
        """Count a batch's work to its tenants."""
        now = time.monotonic()
        served, newcomer = self._service_levels(now)
        for entry in batch:
            cost = entry.item.cost * self.service_factor(entry.tenant)
            served[entry.tenant] = served.get(entry.tenant, newcomer) + cost
            self._served[entry.tenant] = (served[entry.tenant], now)

    def _take_batch(self) -> list[_Entry]:
        self._pending = [e for e in self._pending if not e.future.done()]  # callers that went away
        if not self._pending:
            return []
        self._pending.insert(0, self._pending.pop(self._anchor()))
        if not self.engine.merges:
            return [self._pending.pop(0)]
        window = self._pending[:_WINDOW]
        budget = self._batch_budget()
        # The anchor's tenant first: its request is answered when its last input is, so a turn that took one of
        # its inputs and filled up with another tenant's would cost it a turn per input.
        tenant = window[0].tenant
        own = [i for i, e in enumerate(window) if e.tenant == tenant]
        chosen = self._similar(window, own, budget)
        if len(chosen) == len(own) and len(own) < len(window):  # the room left goes to the others
            chosen = self._fill(window, chosen, budget)
        batch = [window[i] for i in sorted(chosen)]
        self._pending = [e for i, e in enumerate(window) if i not in chosen] + self._pending[_WINDOW:]
        return batch

    def _similar(self, window: list[_Entry], candidates: list[int], budget: int) -> set[int]:
        """The anchor (window[0]) and the candidates of the nearest costs that fit the budget, padded."""
        order = sorted(candidates, key=lambda i: window[i].item.cost)
        cost = [window[i].item.cost for i in order]
        lo = hi = order.index(0)  # the anchor is always in the batch

        def fits(lo: int, hi: int) -> bool:  # padded to the longest member
            return self.engine.batch_cost(hi - lo + 1, cost[hi]) <= budget

        while True:
            left = lo > 0 and fits(lo - 1, hi)
            right = hi + 1 < len(cost) and fits(lo, hi + 1)
            if not (left or right):
                break
            if right and (not left or cost[hi + 1] - cost[hi] <= cost[lo] - cost[lo - 1]):
                hi += 1
            else:
                lo -= 1
        return {order[k] for k in range(lo, hi + 1)}

    def _fill(self, window: list[_Entry], chosen: set[int], budget: int) -> set[int]:
        """`chosen` and other inputs of the nearest costs, while the padded batch fits the budget."""
        longest = max(window[i].item.cost for i in chosen)
        rest = sorted(
            (i for i in range(len(window)) if i not in chosen), key=lambda i: abs(window[i].item.cost - longest)
        )
        chosen = set(chosen)
        for i in rest:
            longer = max(longest, window[i].item.cost)
            if self.engine.batch_cost(len(chosen) + 1, longer) <= budget:
                chosen.add(i)
                longest = longer
        return chosen

    async def _run(self, batch: list[_Entry]) -> None:
        spec_id = self.engine.spec.id
        self.admission.batch_started()
        self._note_service(batch)
        done = 0
        try:
            self.metrics.batch_size.labels(spec_id).observe(sum(e.item.inputs for e in batch))
            try:
                outputs = await self.engine.run([e.item for e in batch])
                done = sum(e.item.cost for e in batch)
            except Exception as exc:  # the engine's error belongs to the requests in this batch
                self._release(batch)
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(exc)
                    # The request has failed: its inputs still queued are dropped, not embedded for nobody.
                    for sibling in entry.request:
                        sibling.future.cancel()
                return
            self._release(batch)
            for entry, output in zip(batch, outputs, strict=True):
                self.metrics.tokens.labels(spec_id).inc(output.tokens)
                if not entry.future.done():
                    entry.future.set_result(output)
        finally:
            self.admission.batch_finished(done)
            self._slots.release()

    def _release(self, batch: list[_Entry]) -> None:
        """Give a finished batch's work back to admission at once, not when each request's last input is
        done: the next tenant in line is admitted after one batch, not after another's whole request."""
        by_tenant: dict[object, int] = {}
        for entry in batch:
            if not entry.released:
                entry.released = True
                by_tenant[entry.tenant] = by_tenant.get(entry.tenant, 0) + entry.item.cost
        for tenant, cost in by_tenant.items():
            self.admission.release(cost, tenant)
