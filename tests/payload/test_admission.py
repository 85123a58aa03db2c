"""Admission by time (admission.py), on a clock the test sets: throughput, honest Retry-After,
refusals spread over time, bookings claimed by the retried request, and expiry."""

from __future__ import annotations

import pytest
from embedstack.admission import Admission
from embedstack.errors import QueueFull

pytestmark = pytest.mark.fast


def measured(rate: float, horizon: float = 10.0) -> Admission:
    """An Admission whose engine has shown `rate` cost units per second."""
    admission = Admission(horizon)
    admission.batch_started(now=0.0)
    admission.batch_finished(int(rate), now=1.0)
    return admission


def refusal(admission: Admission, cost: int, key: object = None, now: float = 1.0) -> int:
    with pytest.raises(QueueFull) as refused:
        admission.admit(cost, key, now=now)
    return refused.value.retry_after


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
    admission = Admission(1.0)
    admission.admit(10_000, now=0.0)
    admission.admit(10_000, now=0.0)
    assert admission.queued_cost == 20_000


def test_admits_within_the_horizon_and_retry_after_is_the_honest_wait():
    admission = measured(rate=100.0, horizon=10.0)
    admission.admit(900, now=1.0)  # 9 s of work
    admission.admit(100, now=1.0)  # exactly 10 s
    assert refusal(admission, 250) == 3  # (1000 + 250) / 100 - 10 = 2.5 s, rounded up
    admission.release(900)  # the first request was answered
    admission.admit(250, "again", now=2.0)
    assert admission.queued_cost == 350


def test_an_empty_queue_admits_a_request_larger_than_the_horizon():
    admission = measured(rate=10.0, horizon=1.0)
    admission.admit(500, now=1.0)
    assert admission.queued_cost == 500


def test_a_burst_of_refusals_is_spread_by_each_requests_own_work():
    admission = measured(rate=100.0, horizon=10.0)
    admission.admit(1000, now=1.0)  # the horizon is full
    waits = [refusal(admission, 100, key=i) for i in range(10)]
    assert waits == list(range(1, 11))  # one second of work apart, not all at once


def test_a_returning_request_claims_its_booking_ahead_of_new_ones():
    admission = measured(rate=100.0, horizon=10.0)
    admission.admit(1000, now=1.0)
    assert refusal(admission, 500, key="roo-batch-7") == 5
    admission.release(600)  # 6 s of work done by the time the client returns
    assert refusal(admission, 300, key="newcomer", now=7.0) == 2  # (400 + 500 booked + 300) / 100 - 10
    admission.admit(500, "roo-batch-7", now=7.0)  # its room was kept
    assert admission.queued_cost == 900


def test_unclaimed_bookings_expire():
    admission = measured(rate=100.0, horizon=10.0)
    admission.admit(1000, now=1.0)
    assert refusal(admission, 500, key="gone") == 5
    admission.release(1000)
    assert refusal(admission, 1000, key="newcomer", now=2.0) == 5  # (0 + 500 + 1000) / 100 - 10
    admission.admit(1000, "later", now=12.5)  # past both slots and their grace: nothing booked any more
