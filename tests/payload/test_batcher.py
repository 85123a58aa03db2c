"""Batching policy on the real local engine and model: budgets, grouping, order, admission.

The policy without the model (admission, failures, cancellation, drain) is in test_batcher_in_process.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from embedstack.config import load_settings
from embedstack.core.batcher import Batcher
from embedstack.core.metrics import Metrics
from embedstack.engines.local import LocalEngine, bucket_rows
from embedstack.errors import QueueFull


class RecordingEngine(LocalEngine):
    """The real engine, noting the token lengths of every batch it runs."""

    def __init__(self, *args):
        super().__init__(*args)
        self.batches: list[list[int]] = []

    async def run(self, items):
        self.batches.append([item.cost for item in items])
        return await super().run(items)


@pytest.fixture(scope="module")
def engine():
    settings = load_settings({}, env={"EMBEDSTACK_COMPILE": "off"})
    eng = RecordingEngine(settings.models[0], settings)
    asyncio.run(eng.start())
    return eng


def texts(n: int, words: int) -> list[str]:
    return [f"item {i} " + "token " * words for i in range(n)]


def run(engine, budget: int, queue: int, jobs: list[list[str]]):
    async def main():
        batcher = Batcher(
            engine,
            max_batch_tokens=budget,
            max_wait_ms=5,
            max_queue_inputs=queue,
            max_queue_seconds=60,
            metrics=Metrics(),
        )
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.embed(job, truncate=True, input_type="document") for job in jobs), return_exceptions=True
            )
        finally:
            batcher._loop_task.cancel()

    engine.batches.clear()
    return asyncio.run(main())


def test_batches_respect_the_token_budget_and_group_similar_lengths(engine):
    jobs = [texts(8, 3), texts(8, 100), texts(8, 20), texts(8, 100)]
    results = run(engine, budget=1024, queue=1000, jobs=jobs)
    assert all(r.vectors.shape == (8, 384) for r in results)
    for batch in engine.batches:
        assert bucket_rows(len(batch)) * max(batch) <= 1024  # padding rows included
    # long items were not padded together with short ones
    assert not any(min(b) <= 16 and max(b) >= 128 for b in engine.batches)


def test_each_request_gets_its_own_vectors_back(engine):
    jobs = [texts(3, w) for w in (1, 50, 5, 200)]
    merged = run(engine, budget=8192, queue=1000, jobs=jobs)
    alone = [run(engine, budget=8192, queue=1000, jobs=[job])[0] for job in jobs]
    for m, a in zip(merged, alone, strict=True):
        assert np.allclose(m.vectors, a.vectors, atol=2e-2)
        assert m.prompt_tokens == a.prompt_tokens


def test_a_request_larger_than_the_free_queue_is_refused_whole(engine):
    results = run(engine, budget=8192, queue=10, jobs=[texts(8, 5), texts(8, 5)])
    assert sum(isinstance(r, QueueFull) for r in results) == 1
    assert sum(not isinstance(r, Exception) for r in results) == 1
