"""A rate per tenant (a token bucket that may go into debt): each taker learns how long to wait for
its share, so a tenant over its rate is slowed down, not refused, and other tenants are not slowed.

Two rates use it, both because the event loop's work is GIL time the inference thread shares:
- Upload bytes (EMBEDSTACK_MAX_UPLOAD_BYTES_PER_SECOND): one key that streams large or malformed
  bodies as fast as its link allows (attack_bench.py: 1 MiB bodies at 180 MiB/s, 8 MiB ones at
  220 MiB/s) would take the time of reading and parsing them from every other tenant's requests.
  TCP holds the rest of a slowed body in its own buffers, the body deadline still applies, and its
  concurrency slots stay its own. Roo Code sends about 100 KB a request, so the default (16 MiB/s, a
  second's worth or one largest body at once) never slows a real client.
- Requests of a refused tenant (core/refusal_pacing.py).
"""

from __future__ import annotations

import time

# Buckets kept before idle ones (full again) are forgotten.
_MAX_TRACKED = 4096


class TenantRate:
    def __init__(self, per_second: float, burst: float, clock=time.monotonic):
        self.rate = per_second
        self.burst = max(burst, per_second)
        self.clock = clock
        self._buckets: dict[object, tuple[float, float]] = {}  # tenant: (what it may still take, as of)

    def delay(self, tenant: object, size: float) -> float:
        """Take `size` from the tenant's bucket; seconds to wait before going on (0 = at once)."""
        if not self.rate:
            return 0.0
        now = self.clock()
        left, as_of = self._buckets.get(tenant, (float(self.burst), now))
        left = min(float(self.burst), left + (now - as_of) * self.rate) - size
        if len(self._buckets) >= _MAX_TRACKED and tenant not in self._buckets:
            self._forget_idle(now)
        self._buckets[tenant] = (left, now)
        return 0.0 if left >= 0 else -left / self.rate

    def give_back(self, tenant: object, size: float) -> None:
        """Return `size` taken for what did not happen after all (a client that left while it waited)."""
        if tenant in self._buckets:
            left, as_of = self._buckets[tenant]
            self._buckets[tenant] = (min(float(self.burst), left + size), as_of)

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets that are full again; if none is, the half least recently used (so a flood of
        new tenants costs one scan per _MAX_TRACKED // 2 of them, not one each)."""
        busy = {t: v for t, v in self._buckets.items() if v[0] + (now - v[1]) * self.rate < self.burst}
        if len(busy) >= _MAX_TRACKED:
            busy = dict(sorted(busy.items(), key=lambda tv: tv[1][1])[_MAX_TRACKED // 2 :])
        self._buckets = busy
