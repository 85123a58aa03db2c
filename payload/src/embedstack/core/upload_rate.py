"""Request bodies are read at most so fast per tenant (a token bucket of bytes): reading and parsing
a body is event-loop and GIL time that the inference thread shares, and one key that streams large or
malformed bodies as fast as its link allows (attack_bench.py: 1 MiB bodies at 180 MiB/s, 8 MiB ones at
220 MiB/s) would otherwise take that time from every other tenant's requests. A tenant over its rate is
read more slowly, not refused: TCP holds the rest of its body in its own buffers, the body deadline
still applies, and its concurrency slots stay its own. Roo Code sends about 100 KB a request, so the
default (16 MiB/s, a second's worth or one largest body at once) never slows a real client.
"""

from __future__ import annotations

import time

# Buckets kept before idle ones (full again) are forgotten.
_MAX_TRACKED = 4096


class UploadRate:
    def __init__(self, bytes_per_second: int, burst: int, clock=time.monotonic):
        self.rate = bytes_per_second
        self.burst = max(burst, bytes_per_second)
        self.clock = clock
        self._buckets: dict[object, tuple[float, float]] = {}  # tenant: (bytes it may still send, as of)

    def delay(self, tenant: object, size: int) -> float:
        """Take `size` bytes from the tenant's bucket; seconds to wait before reading on (0 = at once)."""
        if not self.rate:
            return 0.0
        now = self.clock()
        left, as_of = self._buckets.get(tenant, (float(self.burst), now))
        left = min(float(self.burst), left + (now - as_of) * self.rate) - size
        if len(self._buckets) >= _MAX_TRACKED and tenant not in self._buckets:
            self._forget_idle(now)
        self._buckets[tenant] = (left, now)
        return 0.0 if left >= 0 else -left / self.rate

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets that are full again; if none is, the half least recently used (so a flood of
        new tenants costs one scan per _MAX_TRACKED // 2 of them, not one each)."""
        busy = {t: v for t, v in self._buckets.items() if v[0] + (now - v[1]) * self.rate < self.burst}
        if len(busy) >= _MAX_TRACKED:
            busy = dict(sorted(busy.items(), key=lambda tv: tv[1][1])[_MAX_TRACKED // 2 :])
        self._buckets = busy
