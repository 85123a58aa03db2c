"""The batcher's policy without a model: admission, failures, cancellation and drain, on a fake engine.

Batching against the real model's costs is in test_batcher.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from embedstack.config import load_settings
from embedstack.core.batcher import Batcher
from embedstack.core.metrics import Metrics
from embedstack.engines import Item
from embedstack.engines.local import bucket_length, bucket_rows
from embedstack.errors import QueueFull, Unavailable
from fake_engine import FakeEngine, token_ids, vector_of

pytestmark = pytest.mark.fast

SETTINGS = load_settings({}, env={})


def engine() -> FakeEngine:
    return FakeEngine(SETTINGS.models[0], SETTINGS)


def batcher_for(eng, *, budget: int = 8192, queue: int = 100, wait_ms: float = 0, hold: float = 0) -> Batcher:
    batcher = Batcher(
        eng,
        max_batch_tokens=budget,
        max_wait_ms=wait_ms,
        max_queue_inputs=queue,
        max_queue_seconds=60,
        metrics=Metrics(),
        max_hold_seconds=hold,
    )
    batcher.start()
    return batcher


def embed(batcher: Batcher, inputs: list) -> asyncio.Task:
    return asyncio.create_task(batcher.embed(inputs, truncate=True, input_type="document"))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_concurrent_requests_each_get_their_own_vectors_in_order():
    async def main():
        batcher = batcher_for(engine(), wait_ms=5)
        jobs = [[f"request {r} item {i} " + "w " * (r * 7) for i in range(3)] for r in range(6)]
        try:
            return jobs, await asyncio.gather(*(embed(batcher, job) for job in jobs))
        finally:
            await batcher.close()

    jobs, results = asyncio.run(main())
    for job, result in zip(jobs, results, strict=True):
        expected = np.concatenate([vector_of(token_ids(text), 384) for text in job])
        np.testing.assert_array_equal(result.vectors, expected)
        assert result.prompt_tokens == sum(len(token_ids(text)) for text in job)


def test_batches_stay_within_the_token_budget_and_the_oldest_item_is_never_left_behind():
    async def main():
        eng = engine()
        eng.hold = asyncio.Event()
        batcher = batcher_for(eng, budget=64)
        try:
            first = embed(batcher, ["old " * 30])  # the oldest, and long
            await settle()
            rest = [embed(batcher, ["short"]) for _ in range(40)]
            await settle()
            eng.hold.set()
            await asyncio.gather(first, *rest)
            return eng.batches
        finally:
            await batcher.close()

    batches = asyncio.run(main())
    costs = [[item.cost for item in batch] for batch in batches]
    assert costs[0] == [30]
    assert all(len(c) * max(c) <= 64 for c in costs)
    assert sum(len(c) for c in costs) == 41


def test_a_request_larger_than_the_free_queue_is_refused_whole_and_nothing_is_queued():
    async def main():
        eng = engine()
        eng.hold = asyncio.Event()
        batcher = batcher_for(eng, queue=10)
        try:
            admitted = embed(batcher, ["a"] * 8)
            await settle()
            with pytest.raises(QueueFull, match="8 of 10 inputs waiting"):
                await batcher.embed(["b"] * 3, truncate=True, input_type="document")
            queued_while_full = batcher.queued_inputs
            eng.hold.set()
            await admitted
            return queued_while_full, batcher.queued_inputs
        finally:
            await batcher.close()

    assert asyncio.run(main()) == (8, 0)


def test_a_failed_batch_fails_its_requests_and_their_queued_siblings_are_not_embedded():
    async def main():
        eng = engine()
        eng.hold = asyncio.Event()
        batcher = batcher_for(eng, budget=8)  # one 8-token item per batch
        try:
            request = embed(batcher, ["w " * 8] * 4)
            await settle()  # the first item runs, three wait
            eng.fail_next = RuntimeError("device lost")
            eng.hold.set()
            with pytest.raises(RuntimeError, match="device lost"):
                await request
            await asyncio.sleep(0.05)
            return len(eng.batches), batcher.queued_inputs, batcher._pending
        finally:
            await batcher.close()

    runs, queued, pending = asyncio.run(main())
    assert runs == 1  # the three siblings were dropped, not embedded for nobody
    assert queued == 0
    assert pending == []


def test_a_client_that_goes_away_leaves_nothing_queued():
    async def main():
        eng = engine()
        eng.hold = asyncio.Event()
        batcher = batcher_for(eng, budget=8)
        try:
            busy = embed(batcher, ["w " * 8])
            await settle()
            gone = embed(batcher, ["w " * 8] * 5)
            await settle()
            gone.cancel()
            await settle()
            queued_after_cancel = batcher.queued_inputs
            eng.hold.set()
            await busy
            await asyncio.sleep(0.05)
            return queued_after_cancel, len(eng.batches)
        finally:
            await batcher.close()

    queued, runs = asyncio.run(main())
    assert queued == 1  # only the running request
    assert runs == 1  # the cancelled request's items never ran


def test_drain_refuses_new_work_and_lets_admitted_work_finish():
    async def main():
        eng = engine()
        eng.hold = asyncio.Event()
        batcher = batcher_for(eng)
        try:
            admitted = embed(batcher, ["x", "y"])
            await settle()
            loop = asyncio.get_running_loop()
            drain = asyncio.create_task(batcher.drain(loop.time() + 5))
            await settle()
            with pytest.raises(Unavailable) as refused:
                await batcher.embed(["z"], truncate=True, input_type="document")
            eng.hold.set()
            return await drain, (await admitted).vectors.shape, refused.value.code
        finally:
            await batcher.close()

    assert asyncio.run(main()) == (True, (2, 384), "draining")


def test_padded_shapes_come_from_a_bounded_set():
    lengths = {bucket_length(n, 256) for n in range(1, 257)}
    assert lengths == {8, 16, 32, 64, 96, 128, 160, 192, 224, 256}
    assert bucket_length(300, 256) == 256
    rows = {bucket_rows(n) for n in range(1, 1025)}
    assert len(rows) == 20
    assert all(bucket_rows(n) >= n and bucket_rows(n) <= 1.5 * n + 1 for n in range(1, 1025))
    shapes = {(r, length) for r in rows for length in lengths if r * length <= 8192}
    assert len(shapes) < 200  # x3 linear kinds stays inside oneDNN's 1024-entry primitive cache


class StuckEngine:
    """An engine whose batches never finish in time: a slow or hung upstream."""

    merges = False
    concurrency = 4

    def __init__(self, spec):
        self.spec = spec

    def estimate_cost(self, inputs, input_type):
        return len(inputs)

    async def prepare(self, inputs, *, truncate, input_type):
        return [Item(payload=inputs, cost=len(inputs), inputs=len(inputs))]

    def startup_rate(self):
        return None

    async def run(self, items):
        await asyncio.sleep(60)

    async def close(self):
        pass


def test_the_drain_deadline_answers_running_work_503_instead_of_cutting_it_off():
    async def main():
        batcher = batcher_for(StuckEngine(SETTINGS.models[0]), budget=1024)
        try:
            calls = [
                asyncio.create_task(batcher.embed(["x", "y"], truncate=True, input_type="document")) for _ in range(6)
            ]
            await asyncio.sleep(0.1)  # four batches run, two wait
            complete = await batcher.drain(asyncio.get_running_loop().time() + 0.2)
            results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 2)
            return complete, results, batcher.queued_inputs
        finally:
            await batcher.close()

    complete, results, queued = asyncio.run(main())
    assert not complete
    assert all(isinstance(r, Unavailable) and r.code == "draining" for r in results), results
    assert queued == 0


def test_work_beyond_the_horizon_is_refused_with_the_estimated_wait_and_the_queue_keeps_serving():
    async def main():
        eng = engine()
        eng.hold = asyncio.Event()
        batcher = batcher_for(eng)
        batcher.admission.rate = 10.0  # tokens a second, as if measured
        batcher.admission.max_queue_seconds = 1.0
        try:
            admitted = embed(batcher, ["w " * 8])  # 0.8 s of work
            await settle()
            with pytest.raises(QueueFull) as refused:
                await batcher.embed(["w " * 100], truncate=True, input_type="document")
            eng.hold.set()
            await admitted
            return refused.value.retry_after, batcher.queued_inputs, batcher.admission.queued_cost
        finally:
            await batcher.close()

    assert asyncio.run(main()) == (10, 0, 0)  # (8 + 100) / 10 - 1 = 9.8 s


def test_a_request_that_will_be_refused_costs_no_tokenizer_time():
    async def main():
        eng = engine()
        eng.hold = asyncio.Event()
        batcher = batcher_for(eng)
        batcher.admission.rate, batcher.admission.max_queue_seconds = 10.0, 1.0
        try:
            admitted = embed(batcher, ["w " * 8])
            await settle()
            for _ in range(50):
                with pytest.raises(QueueFull):
                    await batcher.embed(["w " * 100] * 4, truncate=True, input_type="document")
            eng.hold.set()
            await admitted
            return eng.prepared
        finally:
            await batcher.close()

    assert asyncio.run(main()) == [1]  # only the admitted request was tokenized


def test_one_tenants_backlog_does_not_stand_before_another_tenants_request():
    async def main():
        eng = engine()
        eng.hold = asyncio.Event()
        batcher = batcher_for(eng, budget=250)  # two inputs of 100 tokens a batch
        try:
            backlog = [
                asyncio.create_task(
                    batcher.embed([f"a{i} " + "w " * 99], truncate=True, input_type="document", tenant="a")
                )
                for i in range(20)
            ]
            await settle()
            query = asyncio.create_task(
                batcher.embed(["b " + "w " * 99], truncate=True, input_type="document", tenant="b")
            )
            await settle()
            eng.hold.set()
            await asyncio.gather(query, *backlog)
            return next(
                n for n, batch in enumerate(eng.batches) if any(item.payload[0] == token_ids("b")[0] for item in batch)
            )
        finally:
            await batcher.close()

    assert asyncio.run(main()) <= 2  # behind at most the batch running and one of the other tenant's


def test_a_paced_tenants_work_counts_more_so_a_tenant_that_waits_for_its_answers_gets_most_of_the_engine():
    """Both keys have a backlog; key a keeps sending past its pace (core/refusal_pacing.py), so each of its
    batches counts four times: key b gets about four batches in five, not one in two."""

    async def main():
        eng = engine()
        eng.hold = asyncio.Event()
        batcher = batcher_for(eng, budget=250)  # two inputs of 100 tokens a batch
        batcher.service_factor = lambda tenant: 4.0 if tenant == "a" else 1.0
        try:
            work = [
                asyncio.create_task(
                    batcher.embed([f"{t} {i} " + "w " * 98], truncate=True, input_type="document", tenant=t)
                )
                for i in range(30)
                for t in ("a", "b")
            ]
            await settle()
            eng.hold.set()
            await asyncio.gather(*work)
            b_first = token_ids("b")[0]
            return [any(item.payload[0] == b_first for item in batch) for batch in eng.batches[:20]]
        finally:
            await batcher.close()

    served_b = asyncio.run(main())
    assert sum(served_b) >= 14  # of the first 20 batches; equal shares would give b about 10


def test_room_comes_back_batch_by_batch_so_another_tenant_waits_one_batch_not_a_whole_request():
    """Key a's two 4-input requests fill and queue beyond the horizon; key b's one input is admitted as
    soon as one batch is done, not when a's request's last input is."""

    async def main():
        eng = engine()
        eng.hold = asyncio.Event()
        batcher = batcher_for(eng, budget=250, hold=60)  # two inputs of 100 tokens a batch
        batcher.admission.rate, batcher.admission.max_queue_seconds = 100.0, 4.0  # room for 4 inputs
        batcher.admission.clock = lambda: 1.0  # the fake engine's instant batches measure no new rate
        try:
            backlog = [
                asyncio.create_task(
                    batcher.embed(
                        [f"a{r}{i} " + "w " * 99 for i in range(4)], truncate=True, input_type="document", tenant="a"
                    )
                )
                for r in range(2)
            ]
            await settle()
            query = asyncio.create_task(
                batcher.embed(["b " + "w " * 99], truncate=True, input_type="document", tenant="b")
            )
            await settle()
            while not query.done():  # one batch at a time
                eng.hold.set()
                await asyncio.sleep(0)
                eng.hold.clear()
                await settle()
            eng.hold.set()
            await asyncio.gather(*backlog)
            return next(
                n for n, batch in enumerate(eng.batches) if any(item.payload[0] == token_ids("b")[0] for item in batch)
            )
        finally:
            await batcher.close()

    # behind the batch that made room and the one the batcher took meanwhile; a whole request of a's
    # (2 batches) and then another's 2 before, when room came back per request
    assert asyncio.run(main()) <= 2


def test_an_engine_that_runs_one_batch_at_a_time_gets_batches_of_max_batch_seconds_of_work():
    async def main():
        eng = engine()
        eng.hold = asyncio.Event()
        batcher = batcher_for(eng, budget=8192)
        batcher.max_batch_seconds = 0.5
        batcher.admission.rate = 600.0  # cost units a second: 300 a batch
        batcher.admission.clock = lambda: 1.0
        try:
            first = embed(batcher, ["w " * 100])  # runs alone while the rest queue
            await settle()
            rest = embed(batcher, ["w " * 100] * 12)
            await settle()
            eng.hold.set()
            await asyncio.gather(first, rest)
            return [sum(item.cost for item in batch) for batch in eng.batches]
        finally:
            await batcher.close()

    costs = asyncio.run(main())
    assert max(costs) <= 300
    assert sum(costs) == 13 * 100


def overloaded(hold: float, rate: float, horizon: float) -> tuple[FakeEngine, Batcher]:
    eng = engine()
    eng.hold = asyncio.Event()
    batcher = batcher_for(eng, hold=hold)
    batcher.admission.rate, batcher.admission.max_queue_seconds = rate, horizon
    return eng, batcher


def test_a_request_beyond_the_horizon_waits_for_its_slot_instead_of_a_429():
    async def main():
        eng, batcher = overloaded(hold=30, rate=100.0, horizon=0.1)
        try:
            first = embed(batcher, ["w " * 8])
            await settle()
            second = embed(batcher, ["w " * 10])  # (8 + 10) / 100 - 0.1 s: booked 1 s ahead, held
            await asyncio.sleep(0.2)
            held = not second.done() and len(eng.batches) == 1
            eng.hold.set()  # the first finishes; the second is admitted at its slot
            await first
            return held, (await second).prompt_tokens
        finally:
            await batcher.close()

    assert asyncio.run(main()) == (True, 10)


def test_a_wait_longer_than_the_hold_limit_is_a_429_with_that_wait():
    async def main():
        eng, batcher = overloaded(hold=2, rate=10.0, horizon=0.5)
        try:
            first = embed(batcher, ["w " * 8])
            await settle()
            with pytest.raises(QueueFull) as refused:
                await batcher.embed(["w " * 30], truncate=True, input_type="document")
            eng.hold.set()
            await first
            return refused.value.retry_after
        finally:
            await batcher.close()

    # (8 + 30) / 10 - 0.5 = 3.3 s, more than the 2 s the gateway holds: back in 1.3 s, the gateway holds the rest
    assert asyncio.run(main()) == 2


def test_a_drain_answers_held_requests_503_at_once_they_were_never_admitted():
    async def main():
        eng, batcher = overloaded(hold=60, rate=10.0, horizon=0.5)
        try:
            running = embed(batcher, ["w " * 8])
            await settle()
            held = embed(batcher, ["w " * 30])
            await asyncio.sleep(0.1)
            loop = asyncio.get_running_loop()
            drained = asyncio.create_task(batcher.drain(loop.time() + 5))
            await asyncio.sleep(0.1)
            refused = held.exception() if held.done() else None
            eng.hold.set()
            await running
            return refused, await drained
        finally:
            await batcher.close()

    refused, complete = asyncio.run(main())
    assert isinstance(refused, Unavailable) and refused.code == "draining"
    assert complete


def test_the_first_burst_is_paced_by_the_engines_warm_up_throughput():
    async def main(warm_rate):
        eng = engine()
        eng.hold = asyncio.Event()
        eng.warm_rate = warm_rate
        batcher = batcher_for(eng)  # start() reads the engine's warm-up rate
        batcher.admission.max_queue_seconds = 1.0
        try:
            first = embed(batcher, ["w " * 8])  # no batch has finished: nothing measured yet
            await settle()
            second = embed(batcher, ["w " * 100])
            await settle()
            eng.hold.set()
            await first
            outcome = await asyncio.gather(second, return_exceptions=True)
            return outcome[0].retry_after if isinstance(outcome[0], QueueFull) else "admitted"
        finally:
            await batcher.close()

    assert asyncio.run(main(10.0)) == 10  # (8 + 100) / 10 - 1 = 9.8 s, said before any batch ran
    assert asyncio.run(main(None)) == "admitted"  # without a warm-up figure, nothing to estimate from
