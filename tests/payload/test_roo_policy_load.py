"""Four Roo Code processes indexing at once against one CPU gateway lose no batch and keep it busy.

Each emulated process (tools/bench/roo_emulator.py) follows Roo Code's own retry policy as read from
its source: one process-wide 429 backoff of 5 s * 2^(n-1), 3 attempts per batch, only 429 retried,
up to 10 batches of 60 ~1,000-character chunks in flight. Offered several times what the queue
takes, the gateway must answer so that this policy loses nothing (its 429s have to say when a
retry will be admitted, spread so that the retries do not come back together) and the engine never
idles: the whole run takes at most 1.3 x all chunks / the throughput measured with one
well-behaved client (before and after the run; the higher figure). `tools/bench/roo_load.py` is the
larger, printed version of this test; test_roo_policy_paced.py runs the same policy against an engine of
fixed throughput, at the defaults and at a small admission horizon, where a busy machine cannot move
the figures.
"""

from __future__ import annotations

import asyncio

import pytest
from gateway_process import MODEL
from roo_emulator import FULL_URL, SDK, figures, measure_throughput, roo_chunks, run_clients, split_batches

CLIENTS = 4
BATCH = 60
IDEAL_SECONDS = 32  # of work per test at the measured throughput: 8 to 24 batches on 2 cores
MAX_RATIO = 1.3
CUT = 1.6  # the run stops here; what is left counts as unfinished (lost)
# Throughput runs, every batch in flight at once: a short one sizes the run, a fuller one after it is the
# reference (a fuller queue batches better).
BEFORE_BATCHES, AFTER_BATCHES = 4, 6


def throughput(url: str, chunks: list[str]) -> float:
    """chunks/s of one well-behaved client with all of `chunks` in flight: the queue stays full."""
    batches = split_batches(chunks)
    return asyncio.run(measure_throughput(url, MODEL, batches, in_flight=len(batches)))


@pytest.mark.parametrize("path", [SDK, FULL_URL])
def test_four_roo_processes_lose_no_batch_and_keep_the_gateway_busy(start_gateway, path):
    gw = start_gateway()
    before_end = BATCH + BEFORE_BATCHES * BATCH
    pool = roo_chunks(before_end + AFTER_BATCHES * BATCH)
    throughput(gw.url, pool[:BATCH])  # warm-up
    before = throughput(gw.url, pool[BATCH:before_end])

    per_client = max(2, round(before * IDEAL_SECONDS / BATCH / CLIENTS))
    batches = split_batches(roo_chunks(CLIENTS * per_client * BATCH, skip=len(pool)))  # fresh text: no cache hits
    workloads = [batches[i * per_client : (i + 1) * per_client] for i in range(CLIENTS)]
    ideal = CLIENTS * per_client * BATCH / before
    outcomes, seconds = asyncio.run(
        run_clients(gw.url, MODEL, workloads, path=path, deadline_s=CUT * ideal, dimension=384)
    )
    assert gw.proc.poll() is None, f"the gateway died:\n{gw.log}"
    # Measured again: other load on the machine moves it; the higher figure keeps noise from passing.
    after = throughput(gw.url, pool[before_end:])
    fig = figures(outcomes, seconds, max(before, after))
    report = f"{path}: {before:.1f} / {after:.1f} chunks/s measured before / after; {fig.line()}"
    print(report)

    errors = sorted({o.error[:160] for o in outcomes if o.state != "ok" and o.error})
    assert fig.lost == 0 and fig.unfinished == 0, f"{report}\nerrors: {errors[:3]}"
    assert fig.ratio <= MAX_RATIO, report
