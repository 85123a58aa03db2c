"""Roo Code's retry policy against the real server stack and its admission, with an engine of fixed
throughput: what the policy loses and how long it takes depend on the gateway alone, not on what
else the machine runs (test_roo_policy_load.py is the same with the real model, on a busy machine).

Four emulated Roo processes (tools/bench/roo_emulator.py: its rules cite Roo's source), 10 batches
of 60 ~1,000-character chunks each, all in flight at once, as Roo runs; at the defaults and at a small admission
horizon (2 s of queue, 5 s of hold); on both of Roo's URL paths. Targets (issue 22): no batch lost,
no 429 while the engine's queue is below the horizon, all done within 1.3 x the ideal time.
"""

from __future__ import annotations

import asyncio

import pytest
from embedstack.engines import Item, Output
from fake_engine import FakeEngine, FakeEngines, token_ids
from inprocess_gateway import KEY, in_process_gateway
from roo_emulator import FULL_URL, SDK, figures, roo_chunks, run_clients, split_batches

CHUNKS_PER_SECOND = 80.0  # twice what the bundled model serves on 2 cores: a short test, the same policy
WORKSPACES, BATCHES = 4, 10  # 10 batches in flight each, as Roo runs: 2,400 chunks, 30 s of work
MAX_RATIO = 1.3
HORIZONS = {
    "defaults": {},
    "small horizon": {"EMBEDSTACK_MAX_QUEUE_SECONDS": "2", "EMBEDSTACK_MAX_HOLD_SECONDS": "5"},
}


class PacedEngine(FakeEngine):
    """The fake engine, taking CHUNKS_PER_SECOND inputs a second whatever the machine does, and saying
    so at start-up as the local engine does after its warm-up."""

    def __init__(self, spec, settings):
        super().__init__(spec, settings)
        chunks = roo_chunks(WORKSPACES * BATCHES * 60)
        self.warm_rate = CHUNKS_PER_SECOND * sum(len(token_ids(c)) for c in chunks) / len(chunks)

    async def run(self, items: list[Item]) -> list[Output]:
        await asyncio.sleep(len(items) / CHUNKS_PER_SECOND)
        return await super().run(items)


class PacedEngines(FakeEngines):
    def __call__(self, spec, settings):
        self.made[spec.id] = PacedEngine(spec, settings)
        return self.made[spec.id]


@pytest.mark.parametrize("horizon", list(HORIZONS))
@pytest.mark.parametrize("path", [SDK, FULL_URL])
def test_roo_at_its_real_concurrency_loses_nothing_and_keeps_the_engine_busy(path, horizon):
    chunks = roo_chunks(WORKSPACES * BATCHES * 60)
    batches = split_batches(chunks)
    workloads = [batches[i * BATCHES : (i + 1) * BATCHES] for i in range(WORKSPACES)]
    ideal = len(chunks) / CHUNKS_PER_SECOND
    with in_process_gateway(PacedEngines(), EMBEDSTACK_CACHE_BYTES="0", **HORIZONS[horizon]) as gw:
        outcomes, seconds = asyncio.run(
            run_clients(gw.url, "all-minilm-l6-v2", workloads, path=path, deadline_s=2 * ideal, api_key=KEY)
        )
    fig = figures(outcomes, seconds, CHUNKS_PER_SECOND)
    report = f"{path}, {horizon}: {fig.line()}"
    print(report)
    errors = sorted({o.error[:160] for o in outcomes if o.state != "ok" and o.error})
    assert fig.lost == 0 and fig.unfinished == 0, f"{report}\nerrors: {errors[:3]}"
    assert fig.ratio <= MAX_RATIO, report
