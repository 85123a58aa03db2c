"""The per-tenant upload rate (core/tenant_rate.py) on a clock the test sets."""

from __future__ import annotations

import pytest
from embedstack.core.tenant_rate import TenantRate
from settable_clock import Clock

pytestmark = pytest.mark.fast

MIB = 1 << 20


def test_a_tenant_past_its_burst_is_read_at_its_rate_and_another_tenant_is_not_slowed():
    clock = Clock()
    rate = TenantRate(16 * MIB, burst=8 * MIB, clock=clock)
    assert rate.delay("key-a", 16 * MIB) == 0  # the burst is a second's worth
    assert rate.delay("key-a", 8 * MIB) == pytest.approx(0.5)
    assert rate.delay("key-a", 8 * MIB) == pytest.approx(1.0)  # waits add up while it keeps sending
    assert rate.delay("key-b", 8 * MIB) == 0


def test_the_bucket_fills_again_with_time_up_to_the_burst():
    clock = Clock()
    rate = TenantRate(MIB, burst=4 * MIB, clock=clock)
    rate.delay("key-a", 4 * MIB)
    clock.now += 2
    assert rate.delay("key-a", 2 * MIB) == 0
    clock.now += 3600  # idle for an hour: still one burst, not an hour's worth
    assert rate.delay("key-a", 5 * MIB) == pytest.approx(1.0)


def test_zero_is_no_limit():
    rate = TenantRate(0, burst=8 * MIB, clock=Clock())
    assert rate.delay("key-a", 1 << 40) == 0


def test_many_tenants_keep_a_bounded_table():
    clock = Clock()
    rate = TenantRate(MIB, burst=MIB, clock=clock)
    for n in range(20_000):  # an open gateway: one tenant per client address
        rate.delay(f"address:10.0.{n // 256}.{n % 256}", 1000)
        clock.now += 0.01
    assert len(rate._buckets) <= 4096


def test_a_flood_of_new_busy_tenants_keeps_a_bounded_table_and_the_busiest_recent_ones():
    clock = Clock()
    rate = TenantRate(MIB, burst=MIB, clock=clock)
    for n in range(10_000):  # every one still owes bytes: none is idle
        rate.delay(f"address:{n}", 2 * MIB)
        clock.now += 0.0001
    assert len(rate._buckets) <= 4096
    assert rate.delay("address:9999", 1) > 0.9  # the newest still waits out its debt
