"""Admission by time (admission.py), on a clock the test sets: throughput, work conservation, the
line held in turns across tenants, honest Retry-After within what clients obey, bookings that keep a
returning request's place and stay bounded, and the drain."""

from __future__ import annotations

import asyncio
import time

import pytest
from embedstack.core.admission import MAX_BOOKINGS, RETRY_AFTER_MAX_SECONDS, Admission
from embedstack.errors import QueueFull, Unavailable

pytestmark = pytest.mark.fast


class Clock:
    def __init__(self) -> None:
        self.now = 1.0

    def __call__(self) -> float:
        return self.now


def measured(rate: float, horizon: float = 10.0, hold: float = 0.0) -> tuple[Admission, Clock]:
    """An Admission whose engine has shown `rate` cost units per second."""
    clock = Clock()
    admission = Admission(horizon, hold, clock=clock)
    admission.batch_started(now=0.0)
    admission.batch_finished(int(rate), now=1.0)
    admission.release(0)
    return admission, clock


async def refusal(admission: Admission, cost: int, key: object = None, tenant: object = None) -> int:
    with pytest.raises(QueueFull) as refused:
        await admission.acquire(cost, key, tenant)
    return refused.value.retry_after


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_throughput_counts_engine_time_only_and_concurrent_batches_once():
    admission = Admission(10.0)
    for second in range(40):  # two batches at once, 1 s each, with idle time between
        start = 3.0 * second
        admission.batch_started(now=start)
        admission.batch_started(now=start)
        admission.batch_finished(100, now=start + 1)
        admission.batch_finished(100, now=start + 1)
    assert admission.rate == pytest.approx(200.0, rel=0.03)


def test_before_any_measurement_requests_are_admitted():
    async def main():
        admission = Admission(1.0)
        await admission.acquire(10_000)
        await admission.acquire(10_000)
        return admission.queued_cost

    assert asyncio.run(main()) == 20_000


def test_admits_within_the_horizon_and_retry_after_is_the_honest_wait():
    async def main():
        admission, _ = measured(rate=100.0, horizon=10.0)
        await admission.acquire(900)  # 9 s of work
        await admission.acquire(100)  # exactly 10 s
        waited = await refusal(admission, 250)  # (1000 + 250) / 100 - 10 = 2.5 s, rounded up
        admission.release(900)  # the first request was answered
        await admission.acquire(250, "again")
        return waited, admission.queued_cost

    assert asyncio.run(main()) == (3, 350)


def test_an_empty_queue_admits_a_request_larger_than_the_horizon():
    async def main():
        admission, _ = measured(rate=10.0, horizon=1.0)
        await admission.acquire(500)
        return admission.queued_cost

    assert asyncio.run(main()) == 500


def test_refusals_whose_clients_never_return_do_not_keep_an_idle_engine_from_work():
    """Roo Code's full-URL path never reads Retry-After: its refusals must not fence off the room."""

    async def main():
        admission, clock = measured(rate=100.0, horizon=10.0)
        await admission.acquire(1000)  # the horizon is full
        for i in range(20):
            await refusal(admission, 500, key=f"never-back-{i}")
        admission.release(1000)  # the engine is idle again
        clock.now += 1
        for i in range(10):  # ten newcomers of 1 s each fill the horizon: all admitted at once
            await admission.acquire(100, key=f"new-{i}")
        return admission.queued_cost

    assert asyncio.run(main()) == 1000


def test_a_tenants_burst_beyond_the_hold_gets_one_429_and_the_rest_wait_in_line():
    """Roo Code doubles one pause of all its batches on every 429 within a minute: one refusal tells it to
    slow down, ten would stop it for five minutes."""

    async def main():
        admission, clock = measured(rate=100.0, horizon=10.0, hold=2.0)
        await admission.acquire(1000)  # the horizon is full
        admitted: list[int] = []

        async def request(i: int) -> None:
            await admission.acquire(300, i, "roo")  # 3 s each: beyond the 2 s hold
            admitted.append(i)

        first = await refusal(admission, 300, key=0, tenant="roo")
        rest = [asyncio.create_task(request(i)) for i in range(1, 10)]
        await settle()
        held = admission.waiting
        clock.now += first
        back = asyncio.create_task(request(0))  # back as told: ahead of those who came after it
        await settle()
        for _ in range(14):
            admission.release(300)
            await settle()
        await asyncio.gather(back, *rest)
        return first, held, admitted

    first, held, admitted = asyncio.run(main())
    assert first == 1 and held == 9
    assert admitted == list(range(10))


def test_retry_after_stays_below_the_60_s_openai_node_obeys():
    async def main():
        admission, _ = measured(rate=10.0, horizon=1.0)
        await admission.acquire(10)
        return await refusal(admission, 100_000, key="huge")

    assert asyncio.run(main()) == RETRY_AFTER_MAX_SECONDS


def test_a_request_beyond_the_horizon_is_held_in_line_and_admitted_when_room_comes():
    async def main():
        admission, _ = measured(rate=100.0, horizon=10.0, hold=30.0)
        await admission.acquire(1000)
        held = asyncio.create_task(admission.acquire(300, "held"))
        await settle()
        waiting = not held.done() and admission.waiting == 1
        admission.release(400)  # 4 s of work done: room for it
        await held
        return waiting, admission.queued_cost

    assert asyncio.run(main()) == (True, 900)


def test_tenants_take_turns_in_the_line():
    """One key's backlog of held requests does not stand before another key's first request."""

    async def main():
        admission, _ = measured(rate=100.0, horizon=1.0, hold=60.0)
        await admission.acquire(100)
        order: list[str] = []

        async def request(name: str, tenant: str) -> None:
            await admission.acquire(100, name, tenant)
            order.append(name)

        tasks = [asyncio.create_task(request(f"a{i}", "key-a")) for i in range(5)]
        await settle()
        tasks.append(asyncio.create_task(request("b0", "key-b")))
        await settle()
        for _ in range(6):
            admission.release(100)
            await settle()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(main())[:3] == ["a0", "b0", "a1"]


def test_a_tenant_with_nothing_admitted_goes_before_a_backlog_that_fills_the_horizon():
    """Room that comes goes to the tenant with the least work admitted: a key whose backlog holds the
    whole horizon does not take each bit of room before another key's first request."""

    async def main():
        admission, _ = measured(rate=100.0, horizon=3.0, hold=60.0)
        for _ in range(3):
            await admission.acquire(100, None, "key-a")  # key-a holds the whole horizon
        order: list[str] = []

        async def request(name: str, tenant: str) -> None:
            await admission.acquire(100, name, tenant)
            order.append(name)

        tasks = [asyncio.create_task(request(f"a{i}", "key-a")) for i in range(3, 5)]
        await settle()
        tasks.append(asyncio.create_task(request("b0", "key-b")))
        await settle()
        for _ in range(3):
            admission.release(100, "key-a")
            await settle()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(main()) == ["b0", "a3", "a4"]


def test_a_tenant_with_nothing_admitted_is_admitted_at_once_within_the_drain_budget():
    """Key a's backlog fills the horizon (and a flood that slows the engine shrinks the horizon's room):
    key b's request is admitted at once, into the drain budget's room above the horizon, because the
    batcher serves b first; b's next request while the first is admitted, and one beyond the drain
    budget, wait in line."""

    async def main():
        clock = Clock()
        admission = Admission(3.0, 60.0, clock=clock, max_total_seconds=4.0)
        admission.rate = 100.0
        for _ in range(3):
            await admission.acquire(100, None, "key-a")  # the horizon is full
        a_more = asyncio.create_task(admission.acquire(100, "a3", "key-a"))
        await settle()
        b_first = asyncio.create_task(admission.acquire(100, "b0", "key-b"))
        await settle()
        b_second = asyncio.create_task(admission.acquire(50, "b1", "key-b"))
        c_large = asyncio.create_task(admission.acquire(200, "c0", "key-c"))
        await settle()
        held = [t.done() for t in (a_more, b_first, b_second, c_large)]
        for task in (a_more, b_second, c_large):
            task.cancel()
        return held, admission.queued_cost

    held, queued = asyncio.run(main())
    assert held == [False, True, False, False]
    assert queued == 400


def test_a_returning_request_keeps_the_place_of_its_first_arrival():
    async def main():
        admission, clock = measured(rate=100.0, horizon=1.0, hold=5.0)
        await admission.acquire(100)
        # 6 s of work held in line, then a refusal: its turn is beyond the 5 s hold
        line = [asyncio.create_task(admission.acquire(100, f"held-{i}")) for i in range(5)]
        await settle()
        early = await refusal(admission, 100, key="roo-batch-7")
        for _ in range(2):  # two of the line are admitted meanwhile
            admission.release(100)
            await settle()
        clock.now += 2
        late = asyncio.create_task(admission.acquire(100, "newcomer"))
        await settle()
        back = asyncio.create_task(admission.acquire(100, "roo-batch-7"))  # came back after the newcomer
        await settle()
        admitted: list[str] = []
        for name, task in (("newcomer", late), ("roo-batch-7", back)):
            task.add_done_callback(lambda _, n=name: admitted.append(n))
        for _ in range(8):
            admission.release(100)
            await settle()
        await asyncio.gather(*line, late, back)
        return early, admitted

    early, admitted = asyncio.run(main())
    assert early >= 1
    assert admitted == ["roo-batch-7", "newcomer"]


@pytest.mark.timeout(60)
def test_a_flood_of_distinct_refused_requests_costs_constant_work_each():
    async def main():
        admission, _ = measured(rate=100.0, horizon=1.0)
        await admission.acquire(1000)
        started = time.perf_counter()
        for i in range(30_000):
            await refusal(admission, 100, key=f"flood-{i}", tenant=f"key-{i % 7}")
        return time.perf_counter() - started, len(admission._bookings)

    seconds, booked = asyncio.run(main())
    assert booked <= MAX_BOOKINGS
    assert seconds < 10, f"{seconds:.1f} s for 30,000 refusals"  # quadratic: minutes


def test_unclaimed_bookings_expire():
    async def main():
        admission, clock = measured(rate=100.0, horizon=10.0)
        await admission.acquire(1000)
        for i in range(5):
            await refusal(admission, 500, key=f"gone-{i}")
        booked = len(admission._bookings)
        clock.now += 1000  # long past their turns and grace
        await refusal(admission, 500, key="later")
        return booked, sorted(admission._bookings)

    assert asyncio.run(main()) == (5, ["later"])


def test_a_drain_answers_held_requests_at_once_and_refuses_new_ones():
    async def main():
        admission, _ = measured(rate=100.0, horizon=1.0, hold=60.0)
        await admission.acquire(100)
        held = asyncio.create_task(admission.acquire(100, "held"))
        await settle()
        admission.drain()
        with pytest.raises(Unavailable):
            await held
        with pytest.raises(Unavailable):
            await admission.acquire(1)

    asyncio.run(main())


def test_a_held_request_whose_client_leaves_gives_its_place_back():
    async def main():
        admission, _ = measured(rate=100.0, horizon=1.0, hold=60.0)
        await admission.acquire(100)
        gone = asyncio.create_task(admission.acquire(100, "gone"))
        await settle()
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        admission.release(100)
        return admission.waiting, admission.queued_cost

    assert asyncio.run(main()) == (0, 0)
