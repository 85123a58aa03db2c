"""Admission by time, work-conserving: a request is admitted as soon as the work ahead of it, plus
itself, is estimated to finish within the horizon (max_queue_seconds) at the throughput the engine
has shown. An engine with room never refuses.

A request that does not fit waits in line, if its turn is expected within max_hold_seconds: the
gateway holds it instead of answering 429, so clients that never read Retry-After (Roo Code's
full-URL path) lose no attempt. The line is served in turns across tenants (API keys, or client
addresses when the gateway is open): the tenant with the least work admitted goes first, so one
tenant's backlog does not stand before another's first request, however much of the horizon the
backlog already holds; within a tenant, first come first served.

A request whose turn is further away is refused (429) with a Retry-After of when it could be held
and admitted, at most 59 s: openai-node ignores
longer values and falls back to its own back-off of 0.5 to 8 s. The refusal is remembered by the
request's content (a retry sends the same body): when it returns it keeps the place of its first
arrival and is not refused again, but held for up to max_hold_seconds + 240 s (unless holding is off,
max_hold_seconds 0); so are a tenant's
other requests for a minute after one of its requests was refused. Roo Code's full-URL path reads
no Retry-After and gives up on a batch after three 429s, and each 429 within a minute doubles a
pause shared by all of its batches (5 s up to 300 s): one refusal tells it to slow down, a burst
would stop it for minutes. Bookings never reserve room, they expire, and there are at most MAX_BOOKINGS of them, so
a flood of refused requests costs constant work each.

A tenant with no work admitted is admitted at once while everything admitted, its request included,
still fits the drain budget (max_total_seconds): the batcher serves the tenant it served least first,
so its wait is its own work, not the backlog of a tenant that fills the horizon, and the horizon's
room shrinks with the engine's rate when a flood slows it down.

With the horizon inside the drain budget, everything admitted can also finish before a drain
deadline: admission, Retry-After and the drain are one budget. Held requests were never
admitted, so a drain answers them 503 at once.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import math
import time
from dataclasses import dataclass, field

from embedstack.errors import QueueFull, Unavailable

# How quickly the throughput estimate follows a change, in seconds of engine work.
_RATE_MEMORY_SECONDS = 10.0
# Work observed before an estimate replaces the previous one: short batches measure noise.
_MIN_SAMPLE_SECONDS = 0.05
# How long past its expected turn a refused request is remembered: clients add their own delays, and Roo
# Code's process-wide pause after 429s reaches 300 s.
_BOOKING_GRACE_SECONDS = 300.0
# How much longer than max_hold_seconds a request refused once is held when it comes back: Node's fetch
# (undici) waits 300 s for an answer, and Roo Code gives up on a batch after its third 429.
_RETURNED_HOLD_SECONDS = 240.0
# A tenant refused within this window has its other requests held instead (Roo Code counts 429s as
# consecutive within 60 s, doubling a pause of all its batches each time).
_TENANT_REFUSAL_SECONDS = 60.0
# Remembered refusals, in all and per tenant: beyond them a refusal is still answered, just not remembered.
MAX_BOOKINGS = 1024
_MAX_BOOKINGS_PER_TENANT = MAX_BOOKINGS // 4
# openai-node honours Retry-After only below 60 s (src/client.ts, v5.12.2); the Python SDK up to 60 s.
RETRY_AFTER_MAX_SECONDS = 59


@dataclass(slots=True)
class _Booking:
    place: tuple[float, int]  # when the request first arrived (and a tie-break): its place in line when back
    cost: int
    tenant: object
    expires: float


@dataclass(slots=True)
class _Waiter:
    cost: int
    place: tuple[float, int]
    future: asyncio.Future = field(repr=False)


class Admission:
    def __init__(
        self,
        max_queue_seconds: float,
        max_hold_seconds: float = 0.0,
        clock=time.monotonic,
        max_total_seconds: float = 0.0,
    ):
        self.max_queue_seconds = max_queue_seconds
        self.max_hold_seconds = max_hold_seconds
        self.max_total_seconds = max(max_total_seconds, max_queue_seconds)
        self.clock = clock
        self.rate: float | None = None  # cost units per second of engine work, once measured
        self.queued_cost = 0  # admitted and not yet answered
        self._admitted: collections.Counter[object] = collections.Counter()  # queued_cost by tenant
        self._running = 0
        self._busy_mark = 0.0
        self._sample_cost = 0
        self._sample_seconds = 0.0
        self._observed_seconds = 0.0
        # The line: each tenant's waiters oldest first, tenants served in turns (the first key's turn is next).
        self._line: collections.OrderedDict[object, collections.deque[_Waiter]] = collections.OrderedDict()
        self._bookings: dict[object, _Booking] = {}
        self._booked_cost = 0
        self._booked_by_tenant: collections.Counter[object] = collections.Counter()
        self._expiries: list[tuple[float, int, object]] = []
        self._sequence = itertools.count()
        self._refused_at: dict[object, float] = {}  # each tenant's last refusal
        self._draining = False

    def backlog_seconds(self) -> float | None:
        """Estimated seconds of work admitted and not yet done."""
        return None if self.rate is None else self.queued_cost / self.rate

    @property
    def waiting(self) -> int:
        return sum(len(waiters) for waiters in self._line.values())

    async def acquire(self, cost: int, key: object = None, tenant: object = None) -> None:
        """Admit `cost` (held until release), hold the request for its turn, or raise QueueFull with
        a Retry-After; a drain answers a held request with Unavailable."""
        if self._draining:
            raise Unavailable("the service is draining; retry on another instance", code="draining")
        now = self.clock()
        self._expire(now)
        booking = self._unbook(key)
        place = booking.place if booking else (now, next(self._sequence))
        if (not self._line and self._fits(cost)) or self._fits_newcomer(cost, tenant):
            self._admit(cost, tenant)
            return
        # A request is refused once, and a tenant once a minute: its other requests wait in line as long as
        # their clients wait for an answer, since clients pause all their work on each 429.
        told = booking is not None or now - self._refused_at.get(tenant, -math.inf) < _TENANT_REFUSAL_SECONDS
        hold = self.max_hold_seconds + (_RETURNED_HOLD_SECONDS if told and self.max_hold_seconds else 0.0)
        wait = self._wait(cost, tenant, place)
        if wait > hold:
            self._note_refusal(tenant, now)
            raise self._refuse(cost, key, tenant, place, now, wait)
        waiter = _Waiter(cost, place, asyncio.get_running_loop().create_future())
        self._enqueue(tenant, waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), hold + 1.0)
        except TimeoutError:
            self._remove(tenant, waiter)
            if waiter.future.done():  # admitted in the same instant
                waiter.future.result()
                return
            now = self.clock()
            self._note_refusal(tenant, now)
            raise self._refuse(cost, key, tenant, place, now, self._wait(cost, tenant, place)) from None
        except asyncio.CancelledError:  # the client left: its place, or its admission, is given back
            self._remove(tenant, waiter)
            if waiter.future.done() and not waiter.future.exception():
                self.release(cost, tenant)
            raise

    def adjust(self, delta: int, tenant: object = None) -> None:
        """Correct an admitted estimate by what the request really costs (known once tokenized)."""
        self._admit(delta, tenant)
        if delta < 0:
            self._admit_waiting()

    def release(self, cost: int, tenant: object = None) -> None:
        """`cost` of `tenant`'s admitted work is done (or will not be done): room for those in line."""
        self._admit(-cost, tenant)
        self._admit_waiting()

    def drain(self) -> None:
        """Refuse from now on; every held request is answered 503 at once (it was never admitted)."""
        self._draining = True
        for waiters in self._line.values():
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(
                        Unavailable("the service is draining; retry on another instance", code="draining")
                    )
        self._line.clear()

    def retry_after_share(self, share: float) -> int:
        """Retry-After for a request refused by the memory bound: when `share` of the backlog is done."""
        backlog = self.backlog_seconds()
        return 1 if backlog is None else min(RETRY_AFTER_MAX_SECONDS, max(1, math.ceil(backlog * min(1.0, share))))

    def batch_started(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        if not self._running:
            self._busy_mark = now  # idle time is not engine work
        self._running += 1

    def batch_finished(self, cost: int, now: float | None = None) -> None:
        """Engine throughput: cost done per second during which at least one batch ran."""
        now = self.clock() if now is None else now
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
        self._admit_waiting()

    # -- the line ----------------------------------------------------------------------------------

    def _fits(self, cost: int) -> bool:
        # Before a measurement nothing can be estimated; an empty queue always admits, so a request
        # larger than the horizon is still served.
        return (
            self.rate is None or not self.queued_cost or (self.queued_cost + cost) / self.rate <= self.max_queue_seconds
        )

    def _fits_newcomer(self, cost: int, tenant: object) -> bool:
        """A tenant with nothing admitted, within the drain budget."""
        return (
            tenant not in self._admitted
            and self.rate is not None
            and (self.queued_cost + cost) / self.rate <= self.max_total_seconds
        )

    def _wait(self, cost: int, tenant: object, place: tuple[float, int]) -> float:
        """Seconds until a request of `tenant` with this place in line would fit: its tenant's earlier
        arrivals go first, and every other tenant takes as many turns meanwhile."""
        if self.rate is None:
            return 0.0
        own = [w for w in self._line.get(tenant, ()) if w.place < place]
        turns = len(own) + 1
        ahead = sum(w.cost for w in own)
        for other, waiters in self._line.items():
            if other != tenant:
                ahead += sum(w.cost for w in itertools.islice(waiters, turns))
        return max(0.0, (self.queued_cost + ahead + cost) / self.rate - self.max_queue_seconds)

    def _enqueue(self, tenant: object, waiter: _Waiter) -> None:
        waiters = self._line.setdefault(tenant, collections.deque())
        if waiters and waiters[-1].place > waiter.place:  # a returning request keeps its first place
            position = next(i for i, w in enumerate(waiters) if w.place > waiter.place)
            waiters.insert(position, waiter)
        else:
            waiters.append(waiter)

    def _remove(self, tenant: object, waiter: _Waiter) -> None:
        waiters = self._line.get(tenant)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._line[tenant]

    def _admit(self, cost: int, tenant: object) -> None:
        self.queued_cost += cost
        left = self._admitted[tenant] + cost
        if left > 0:
            self._admitted[tenant] = left
        else:
            self._admitted.pop(tenant, None)

    def _admit_waiting(self) -> None:
        """Admit held requests while they fit: the tenant with the least work admitted first (of equals,
        the one whose turn came longest ago), so a tenant whose backlog fills the horizon does not take
        each bit of room as it comes before another tenant's first request. A head that does not fit
        stops the line: room collects for it, and it is not passed over for ever by smaller requests."""
        while self._line:
            tenant = min(self._line, key=lambda t: self._admitted.get(t, 0))
            waiters = self._line[tenant]
            head = waiters[0]
            if head.future.done():  # gone (timed out or cancelled): its slot is not taken
                waiters.popleft()
            elif self._fits(head.cost) or self._fits_newcomer(head.cost, tenant):
                waiters.popleft()
                self._admit(head.cost, tenant)
                head.future.set_result(None)
            else:
                return
            del self._line[tenant]
            if waiters:
                self._line[tenant] = waiters  # to the back: the next tenant's turn

    # -- refusals and their bookings ---------------------------------------------------------------

    def _refuse(
        self, cost: int, key: object, tenant: object, place: tuple[float, int], now: float, wait: float
    ) -> QueueFull:
        # Back as soon as its wait is one the gateway holds: the engine is kept busy by those in line, not
        # by those away.
        retry_after = min(RETRY_AFTER_MAX_SECONDS, max(1, math.ceil(wait - self.max_hold_seconds)))
        if key is not None:
            expires = now + wait + _BOOKING_GRACE_SECONDS + (self._booked_cost / self.rate if self.rate else 0.0)
            self._book(key, _Booking(place, cost, tenant, expires))
        backlog = self.backlog_seconds() or 0.0
        return QueueFull(
            f"the queue holds {backlog:.0f} s of work and {self.waiting} requests wait for their turn; this one's is "
            f"{wait:.0f} s away, beyond the {self.max_hold_seconds:g} s the gateway holds a request; retry in "
            f"{retry_after} s",
            retry_after=retry_after,
        )

    def _note_refusal(self, tenant: object, now: float) -> None:
        self._refused_at[tenant] = now
        if len(self._refused_at) > MAX_BOOKINGS:  # tenants refused over a minute ago are forgotten
            self._refused_at = {t: at for t, at in self._refused_at.items() if now - at < _TENANT_REFUSAL_SECONDS}

    def _book(self, key: object, booking: _Booking) -> None:
        if len(self._bookings) >= MAX_BOOKINGS or self._booked_by_tenant[booking.tenant] >= _MAX_BOOKINGS_PER_TENANT:
            return
        self._bookings[key] = booking
        self._booked_cost += booking.cost
        self._booked_by_tenant[booking.tenant] += 1
        heapq.heappush(self._expiries, (booking.expires, next(self._sequence), key))

    def _unbook(self, key: object) -> _Booking | None:
        booking = self._bookings.pop(key, None) if key is not None else None
        if booking is not None:
            self._booked_cost -= booking.cost
            self._booked_by_tenant[booking.tenant] -= 1
            if not self._booked_by_tenant[booking.tenant]:
                del self._booked_by_tenant[booking.tenant]
        return booking

    def _expire(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] < now:
            expires, _, key = heapq.heappop(self._expiries)
            booking = self._bookings.get(key)
            if booking is not None and booking.expires == expires:
                self._unbook(key)
        if len(self._expiries) > 4 * MAX_BOOKINGS:  # entries of claimed bookings: rebuild
            self._expiries = [(b.expires, next(self._sequence), k) for k, b in self._bookings.items()]
            heapq.heapify(self._expiries)
