"""Admission by time: a request is admitted when the work ahead of it, plus itself, is estimated
to finish within the horizon (max_queue_seconds), at the throughput the engine has shown.

A refused request books the next free slot and is told when that is (Retry-After). A later
refusal books the slot after it, so a burst of refusals comes back spread out, each when there
is room for it, instead of all at once to be refused again. A returning request is known by its
content (the same body is sent again) and admitted against the room it booked; new requests
queue behind every booking. Bookings that are not claimed expire.

With the horizon inside the drain budget, everything admitted can also finish before a drain
deadline: admission, Retry-After and the drain are one budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from embedstack.errors import QueueFull

# How quickly the throughput estimate follows a change, in seconds of engine work.
_RATE_MEMORY_SECONDS = 10.0
# Work observed before an estimate replaces the previous one: short batches measure noise.
_MIN_SAMPLE_SECONDS = 0.05
# How long past its slot a booking waits for its request (clients add their own delays).
_BOOKING_GRACE_SECONDS = 5.0


@dataclass(slots=True)
class _Booking:
    slot: float  # monotonic time from which the request is expected to fit
    cost: int
    expires: float


class Admission:
    def __init__(self, max_queue_seconds: float):
        self.max_queue_seconds = max_queue_seconds
        self.rate: float | None = None  # cost units per second of engine work, once measured
        self.queued_cost = 0  # admitted and not yet answered
        self._running = 0
        self._busy_mark = 0.0
        self._sample_cost = 0
        self._sample_seconds = 0.0
        self._observed_seconds = 0.0
        self._bookings: dict[object, _Booking] = {}

    def backlog_seconds(self) -> float | None:
        """Estimated seconds of work admitted and not yet done."""
        return None if self.rate is None else self.queued_cost / self.rate

    def admit(self, cost: int, key: object | None = None, now: float | None = None) -> None:
        """Admit `cost` (held until release) or raise QueueFull with an honest retry_after."""
        now = time.monotonic() if now is None else now
        for stale in [k for k, b in self._bookings.items() if b.expires < now]:
            del self._bookings[stale]
        mine = self._bookings.pop(key, None) if key is not None else None
        ahead = sum(b.cost for b in self._bookings.values() if mine is None or b.slot < mine.slot)
        if self.rate is not None and (self.queued_cost or ahead):
            wait = (self.queued_cost + ahead + cost) / self.rate - self.max_queue_seconds
            if wait > 0:
                retry_after = max(1, math.ceil(wait))
                booking_key = key if key is not None else object()  # cannot be claimed: it only spaces later refusals
                self._bookings[booking_key] = _Booking(now + wait, cost, now + retry_after + _BOOKING_GRACE_SECONDS)
                raise QueueFull(
                    f"the queue holds {self.queued_cost / self.rate:.0f} s of work, more than "
                    f"{self.max_queue_seconds:.0f} s with this request; retry in {retry_after} s",
                    retry_after=retry_after,
                )
        # An empty queue always admits: a request larger than the horizon must still be served.
        self.queued_cost += cost

    def release(self, cost: int) -> None:
        self.queued_cost -= cost

    def retry_after_share(self, share: float) -> int:
        """Retry-After for a request refused by the memory bound: when `share` of the backlog is done."""
        backlog = self.backlog_seconds()
        return 1 if backlog is None else max(1, math.ceil(backlog * min(1.0, share)))

    def batch_started(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not self._running:
            self._busy_mark = now  # idle time is not engine work
        self._running += 1

    def batch_finished(self, cost: int, now: float | None = None) -> None:
        """Engine throughput: cost done per second during which at least one batch ran."""
        now = time.monotonic() if now is None else now
        self._sample_seconds += now - self._busy_mark
        self._busy_mark = now
        self._running -= 1
        self._sample_cost += cost
        if self._sample_seconds < _MIN_SAMPLE_SECONDS:
            return
        measured = self._sample_cost / self._sample_seconds
        self._observed_seconds += self._sample_seconds
        # A plain average until the memory is filled, then an exponential one that follows changes.
        weight = max(
            self._sample_seconds / self._observed_seconds, 1 - math.exp(-self._sample_seconds / _RATE_MEMORY_SECONDS)
        )
        self.rate = measured if self.rate is None else self.rate + weight * (measured - self.rate)
        self._sample_cost, self._sample_seconds = 0, 0.0
