"""create_app(settings): the Starlette application factory."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedstack.api.error_responses import HANDLERS, error_response
from embedstack.api.routes import CLIENT_CLOSED_REQUEST, ROUTES
from embedstack.api.tenants import tenant_of
from embedstack.config import ModelSpec, Settings
from embedstack.connection_limits import CLIENT_GONE
from embedstack.core.metrics import Metrics
from embedstack.core.served_models import ServedModels
from embedstack.engines import Engine, build_engine

_KNOWN_ROUTES = {r.path for r in ROUTES}


class CountRequests:
    """Counts every response by route and status, errors included: it wraps Starlette's
    ServerErrorMiddleware too, which answers the 500s of unexpected failures."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in _KNOWN_ROUTES else "other"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


_LIMITED_ROUTES = frozenset(r.path for r in ROUTES if "POST" in (r.methods or ()))


def _limited_tenant(scope: Scope, keys: frozenset[str]) -> str | None:
    """Whose embedding request this is; None for every other request, and for one without a valid key
    (answered 401 before its body is read)."""
    if scope["type"] != "http" or scope["path"] not in _LIMITED_ROUTES:
        return None
    return tenant_of(scope, keys)


class FairSlots:
    """At most `limit` embedding requests in flight (bodies being read and requests held in line
    included), counted before their bodies are read; one more is a 429 in OpenAI's shape at once
    (uvicorn's limit_concurrency would answer plain text, and count the probes too). /health, /ready
    and /metrics are never limited, and a request without a valid key takes no slot (it is answered
    401 before its body is read).

    Shared out by tenant (api/tenants.py): one tenant alone takes at most three quarters of the
    slots, so another's first requests always find room, and once that reserve is in use a tenant
    above its equal share waits for its own requests to finish. A slot freed goes to whoever asks.
    """

    def __init__(self, app: ASGIApp, limit: int, keys: frozenset[str]):
        self.app = app
        self.limit = limit
        self.reserve = limit // 4
        self.keys = keys
        self.in_flight = 0
        self.by_tenant: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenant = _limited_tenant(scope, self.keys)
        if tenant is None:
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(tenant)
        if refusal:
            await error_response(429, refusal, "rate_limit_error", "too_many_requests")(scope, receive, send)
            return
        self.in_flight += 1
        self.by_tenant[tenant] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.by_tenant[tenant] -= 1
            if not self.by_tenant[tenant]:
                del self.by_tenant[tenant]

    def _refusal(self, tenant: str) -> str | None:
        if self.in_flight >= self.limit:
            return f"{self.in_flight} requests are in flight, the most this gateway takes at once; retry shortly"
        if self.in_flight < self.limit - self.reserve:
            return None
        share = self.limit // max(2, len(self.by_tenant) + (tenant not in self.by_tenant))
        if self.by_tenant[tenant] >= share:
            return (
                f"this key has {self.by_tenant[tenant]} of the gateway's {self.limit} requests in flight, its share "
                "while others wait; retry when one of them is answered"
            )
        return None


class PaceRefusedTenants:
    """A tenant answered 429 lately waits its turn here before its request goes on
    (core/refusal_pacing.py); a drain that starts meanwhile ends the wait (the request is then
    answered 503), and so does the client hanging up (a 499: nothing is left to answer, and a client
    that resets its uploads does not leave thousands of waits behind). Outside FairSlots, so a paced
    request holds no slot and its 429s are paced too."""

    def __init__(self, app: ASGIApp, served: ServedModels, keys: frozenset[str]):
        self.app = app
        self.served = served
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenant = _limited_tenant(scope, self.keys)
        if tenant is None:
            await self.app(scope, receive, send)
            return
        pacing = self.served.refusal_pacing
        if wait := pacing.delay(tenant):
            self.served.metrics.paced.inc()
            if not await self._client_stays(scope, wait):
                pacing.left(tenant)
                await Response(status_code=CLIENT_CLOSED_REQUEST)(scope, receive, send)
                return

        async def noting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 429:
                pacing.refused(tenant)
            await send(message)

        await self.app(scope, receive, noting_send)

    async def _client_stays(self, scope: Scope, seconds: float) -> bool:
        """Wait `seconds`, or until a drain starts; False if the client hung up meanwhile."""
        gone: asyncio.Event | None = scope.get(CLIENT_GONE)  # set by our uvicorn protocol (connection_limits.py)
        ends = [asyncio.ensure_future(self.served.drain_started.wait())]
        if gone is not None:
            ends.append(asyncio.ensure_future(gone.wait()))
        try:
            await asyncio.wait(ends, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for end in ends:
                end.cancel()
        return gone is None or not gone.is_set()


class CloseWhenDraining:
    """While draining, answer with Connection: close so clients reconnect elsewhere
    instead of reusing a keep-alive connection that is about to be shut."""

    def __init__(self, app: ASGIApp, served: ServedModels):
        self.app = app
        self.served = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and self.served.draining:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing_send)


class GatewayApp(Starlette):
    def __init__(self, *args, metrics: Metrics, **kwargs):
        self.metrics = metrics
        super().__init__(*args, **kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        return CountRequests(super().build_middleware_stack(), self.metrics)


def create_app(settings: Settings, engine_factory: Callable[[ModelSpec, Settings], Engine] = build_engine) -> Starlette:
    """engine_factory is where vectors come from; the fast tests pass a fake engine."""
    metrics = Metrics()
    served = ServedModels(settings, metrics, engine_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        # Load models in the background so /health answers while they load.
        loading = asyncio.create_task(served.start(), name="load-models")
        yield
        loading.cancel()
        await served.close()

    app = GatewayApp(routes=ROUTES, exception_handlers=HANDLERS, lifespan=lifespan, metrics=metrics)
    app.state.served_models = served
    app.add_middleware(CloseWhenDraining, served=served)
    app.add_middleware(FairSlots, limit=settings.max_concurrent_requests, keys=settings.api_keys)
    app.add_middleware(PaceRefusedTenants, served=served, keys=settings.api_keys)
    return app
