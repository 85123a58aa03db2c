"""The served models, their batchers, readiness and drain: the state behind the routes."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from embedstack.config import ModelSpec, Settings
from embedstack.core.batcher import Batcher
from embedstack.core.embedding_cache import EmbeddingCache
from embedstack.core.metrics import Metrics
from embedstack.core.refusal_pacing import RefusalPacing
from embedstack.core.tenant_rate import TenantRate
from embedstack.engines import Engine, build_engine
from embedstack.errors import ModelNotFound, excerpt

# The name before core/ existed: operators filter the journal on it.
log = logging.getLogger("embedstack.served_models")


class ServedModels:
    """The served models with their batchers, and the readiness and drain of the whole set."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        engine_factory: Callable[[ModelSpec, Settings], Engine] = build_engine,
    ):
        self.settings = settings
        self.metrics = metrics
        self.cache = EmbeddingCache.from_settings(settings, metrics)
        self.batchers: dict[str, Batcher] = {}
        # The most tokens any served model takes: longer token-id lists are cut while parsing.
        self.longest_max_tokens = max(spec.max_tokens for spec in settings.models)
        self._by_name: dict[str, Batcher] = {}
        self.refusal_pacing = RefusalPacing(settings.refused_requests_per_second)
        for spec in settings.models:
            engine = engine_factory(spec, settings)
            batcher = Batcher(
                engine,
                max_batch_tokens=settings.max_batch_tokens,
                max_batch_seconds=settings.max_batch_seconds,
                max_wait_ms=settings.max_wait_ms,
                max_queue_inputs=settings.max_queue_inputs,
                max_queue_seconds=settings.queue_horizon,
                max_hold_seconds=settings.max_hold_seconds,
                drain_seconds=settings.drain_seconds,
                cache=self.cache,
                metrics=metrics,
                service_factor=self.refusal_pacing.service_factor,
            )
            self.batchers[spec.id] = batcher
            for name in spec.names:
                self._by_name[name] = batcher
        self.ready = False
        self.draining = False
        self.drain_started = asyncio.Event()  # bodies still arriving are answered 503 at once
        self.failure: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] = lambda exc: None
        self.inflight = 0  # embeddings requests between arrival and response
        self.large_parse = asyncio.Lock()  # one large body is parsed at a time, on a worker thread
        self.parse_turn = asyncio.Lock()  # and one small body at a time, each in an event-loop turn of its own
        self.upload_rate = TenantRate(settings.max_upload_bytes_per_second, burst=settings.max_body_bytes)
        self._quiet = asyncio.Event()
        self._quiet.set()

    @property
    def specs(self) -> list[ModelSpec]:
        return [b.engine.spec for b in self.batchers.values()]

    def resolve(self, name: str) -> Batcher:
        try:
            return self._by_name[name]
        except KeyError:
            served = ", ".join(sorted(self.batchers))
            raise ModelNotFound(
                f"model {excerpt(name)} is not served here; served models: {served}", param="model"
            ) from None

    async def start(self) -> None:
        """Load every engine; any failure is fatal, because a half-served registry misleads clients."""
        try:
            for batcher in self.batchers.values():
                started = time.monotonic()
                await batcher.engine.start()
                batcher.start()
                log.info("model %s ready in %.1f s", batcher.engine.spec.id, time.monotonic() - started)
        except Exception as exc:
            self.failure = exc
            log.error("start-up failed: %s", getattr(exc, "message", exc))
            self.on_fatal(exc)
            return
        # What start-up made (the model, torch, every module) lives as long as the process: out of the
        # collector's sight, a full collection scans what requests made, not some 380,000 objects for 165 ms
        # with the event loop stopped (/ready took 200 ms under a flood of connections; attack_bench.py).
        gc.collect()
        gc.freeze()
        self.ready = True
        self.metrics.ready.set(1)

    def enter(self) -> None:
        self.inflight += 1
        self._quiet.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self._quiet.set()

    async def drain(self, seconds: float) -> None:
        """Stop taking work at once; give accepted work until the deadline to finish."""
        self.draining = True
        self.drain_started.set()
        self.metrics.ready.set(0)
        deadline = time.monotonic() + seconds
        log.info("draining: /ready is 503, new requests get 503, %d in flight, %.0f s allowed", self.inflight, seconds)
        results = await asyncio.gather(*(b.drain(deadline) for b in self.batchers.values()))
        try:  # responses still being written after their vectors came back
            await asyncio.wait_for(self._quiet.wait(), max(0.5, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("drain deadline reached with %d requests still in flight", self.inflight)
        log.info("drained (%s)", "complete" if all(results) else "deadline reached")

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        if self.cache is not None:
            await self.cache.close()  # what is still queued for the disk is written
