"""Prometheus metrics, one registry per app so tests and several apps in one process stay apart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "embedstack_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "embedstack_request_duration_seconds",
            "Embeddings request latency",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "embedstack_batch_size",
            "Inputs per engine batch",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "embedstack_queue_depth", "Inputs accepted and not yet answered", ["model"], registry=self.registry
        )
        self.tokens = Counter("embedstack_tokens", "Tokens embedded", ["model"], registry=self.registry)
        self.truncated = Counter(
            "embedstack_truncated_inputs",
            "Inputs cut to the model's max_tokens: only their start was embedded",
            ["model"],
            registry=self.registry,
        )
        self.queue_seconds = Gauge(
            "embedstack_queue_seconds",
            "Estimated seconds of admitted work not yet done",
            ["model"],
            registry=self.registry,
        )
        self.throughput = Gauge(
            "embedstack_throughput_tokens_per_second",
            "The engine's measured throughput, padding included",
            ["model"],
            registry=self.registry,
        )
        self.lone_surrogates = Counter(
            "embedstack_lone_surrogates_replaced",
            "Lone UTF-16 surrogates in inputs (a split emoji), embedded as U+FFFD",
            registry=self.registry,
        )
        self.paced = Counter(
            "embedstack_paced_requests",
            "Embedding requests of a key answered 429 lately that waited their turn (core/refusal_pacing.py)",
            registry=self.registry,
        )
        self.ready = Gauge("embedstack_ready", "1 when serving, 0 while starting or draining", registry=self.registry)
        # Embedding cache: a hit is counted by the tier that answered it, a miss only when no tier could.
        self.cache_hits = Counter(
            "embedstack_cache_hits", "Inputs answered from the cache, by tier", ["tier"], registry=self.registry
        )
        self.cache_misses = Counter(
            "embedstack_cache_misses", "Inputs the cache could not answer", registry=self.registry
        )
        self.cache_evictions = Counter(
            "embedstack_cache_evictions", "Vectors evicted to keep a bound, by tier", ["tier"], registry=self.registry
        )
        self.cache_disk_read_timeouts = Counter(
            "embedstack_cache_disk_read_timeouts",
            "Disk cache reads given up at their deadline, or not tried while the disk did not answer (misses)",
            registry=self.registry,
        )
        self.cache_bytes = Gauge(
            "embedstack_cache_bytes", "Bytes the cache holds, by tier", ["tier"], registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
