"""Pacing of refused tenants (core/refusal_pacing.py) on a clock the test sets."""

from __future__ import annotations

import pytest
from embedstack.core.refusal_pacing import PACED_SERVICE_FACTOR, RefusalPacing
from settable_clock import Clock

pytestmark = pytest.mark.fast


def test_a_tenant_never_refused_is_never_paced_however_many_requests_it_sends():
    pacing = RefusalPacing(10, clock=Clock())
    assert [pacing.delay("key-a") for _ in range(1000)] == [0.0] * 1000
    assert pacing.service_factor("key-a") == 1.0


def test_after_a_refusal_a_burst_goes_at_once_then_one_request_per_tick_and_other_tenants_are_not_paced():
    pacing = RefusalPacing(10, clock=Clock())
    pacing.refused("key-a")
    waits = [pacing.delay("key-a") for _ in range(13)]
    assert waits[:10] == [0.0] * 10  # as many at once as a second's worth
    assert waits[10:] == pytest.approx([0.1, 0.2, 0.3])  # the rest wait their turn, one each 0.1 s
    assert pacing.delay("key-b") == 0.0


def test_a_request_that_left_while_it_waited_gives_its_turn_to_the_next():
    pacing = RefusalPacing(10, clock=Clock())
    pacing.refused("key-a")
    waits = [pacing.delay("key-a") for _ in range(13)]
    assert waits[-1] == pytest.approx(0.3)
    pacing.left("key-a")  # a client that resets its upload leaves no debt behind for the key's next request
    assert pacing.delay("key-a") == pytest.approx(0.3)


def test_a_paced_tenants_work_counts_more_for_the_engine_until_a_minute_after_its_last_paced_request():
    clock = Clock()
    pacing = RefusalPacing(10, clock=clock)
    pacing.refused("key-a")
    for _ in range(10):
        pacing.delay("key-a")
    assert pacing.service_factor("key-a") == 1.0  # refused, but it has not sent past its pace
    pacing.delay("key-a")
    assert pacing.service_factor("key-a") == PACED_SERVICE_FACTOR
    assert pacing.service_factor("key-b") == 1.0
    clock.now += 61
    assert pacing.service_factor("key-a") == 1.0
    assert pacing.delay("key-a") == 0.0  # its last refusal is over a minute old


def test_zero_switches_pacing_off():
    pacing = RefusalPacing(0, clock=Clock())
    pacing.refused("key-a")
    assert [pacing.delay("key-a") for _ in range(100)] == [0.0] * 100


def test_a_flood_of_refused_addresses_keeps_bounded_tables():
    clock = Clock()
    pacing = RefusalPacing(1, clock=clock)
    for n in range(20_000):  # an open gateway: one tenant per client address
        tenant = f"address:10.0.{n // 256}.{n % 256}"
        pacing.refused(tenant)
        pacing.delay(tenant)
        pacing.delay(tenant)
        clock.now += 0.001
    assert len(pacing._refused._at) <= 4096
    assert len(pacing._paced._at) <= 4096
    assert pacing.delay("address:10.0.78.31") > 0  # the most recent are remembered
