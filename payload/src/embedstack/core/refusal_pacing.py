"""A tenant that was just answered 429 has its embedding requests start at most so many a second
(EMBEDSTACK_REFUSED_REQUESTS_PER_SECOND, as many at once); the rest wait their turn before anything
of theirs is read.

A refusal is cheap only for the client. The gateway reads the body, parses and measures it, and
estimates its cost before it knows the answer: about 2 ms of event loop for Roo Code's 60 chunks,
and the loop shares the CPU and the GIL with the inference thread. A client that ignores
Retry-After and keeps its connections busy turns refusals into a loop: attack_bench.py's flood (200
connections of 60-chunk requests) got 230 refusals a second, half of a one-CPU gateway, and another
key's requests took 4x as long. Answering 429 sooner only makes the loop faster; making the refused
tenant wait is what slows it down, as nginx's limit_req delays requests over its rate.

Only a tenant refused in the last _WINDOW_SECONDS is paced, so no client that is being served ever
waits here, and Roo Code, which pauses all its batches after one 429, never reaches the rate. A
tenant's waiting requests are bounded by its connections (connection_limits.py).

A tenant that is paced still has admitted work, and the engine is shared by recent work
(core/batcher.py): left at that, its backlog takes half the engine from a client that waits for each
answer before it sends the next, which then takes twice as long. While a tenant is paced, its work
counts PACED_SERVICE_FACTOR times.
"""

from __future__ import annotations

import collections
import time

from embedstack.core.tenant_rate import TenantRate

# How long after its last 429 a tenant's requests are paced, and after its last paced request its engine
# work counts more: as long as admission remembers a tenant's refusal (core/admission.py), and Roo Code
# counts its 429s as consecutive.
_WINDOW_SECONDS = 60.0
# For the engine's sharing (core/batcher.py), a paced tenant's work counts this many times: the tenants that
# take the answer get four fifths of the engine against it.
PACED_SERVICE_FACTOR = 4.0
# Tenants remembered in each table; the longest ago are forgotten first.
_MAX_TRACKED = 4096


class _Recent:
    """When each tenant last did something, for _WINDOW_SECONDS, in a bounded table."""

    def __init__(self, clock):
        self.clock = clock
        self._at: collections.OrderedDict[object, float] = collections.OrderedDict()

    def note(self, tenant: object) -> None:
        self._at.pop(tenant, None)
        self._at[tenant] = self.clock()
        if len(self._at) > _MAX_TRACKED:
            self._at.popitem(last=False)

    def __contains__(self, tenant: object) -> bool:
        at = self._at.get(tenant)
        if at is None:
            return False
        if self.clock() - at > _WINDOW_SECONDS:
            del self._at[tenant]
            return False
        return True


class RefusalPacing:
    def __init__(self, requests_per_second: float, clock=time.monotonic):
        self._rate = TenantRate(requests_per_second, burst=requests_per_second, clock=clock)
        self._refused = _Recent(clock)
        self._paced = _Recent(clock)

    def refused(self, tenant: object) -> None:
        """`tenant` was just answered 429."""
        if self._rate.rate:
            self._refused.note(tenant)

    def delay(self, tenant: object) -> float:
        """Seconds a request of `tenant` waits before it is read (0 = at once)."""
        if tenant not in self._refused:
            return 0.0
        wait = self._rate.delay(tenant, 1)
        if wait:
            self._paced.note(tenant)
        return wait

    def left(self, tenant: object) -> None:
        """A request of `tenant` left while it waited: its turn goes to the next one."""
        self._rate.give_back(tenant, 1)

    def service_factor(self, tenant: object) -> float:
        """How many times the tenant's engine work counts when the engine is shared: more while it keeps
        sending past its pace (a client that ignores Retry-After), so its backlog does not take half the
        engine from a client that waits for its answers."""
        return PACED_SERVICE_FACTOR if tenant in self._paced else 1.0
