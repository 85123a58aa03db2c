"""create_app(settings): the Starlette application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedstack.api.error_responses import HANDLERS, error_response
from embedstack.api.routes import ROUTES
from embedstack.config import ModelSpec, Settings
from embedstack.engines import Engine, build_engine
from embedstack.metrics import Metrics
from embedstack.served_models import ServedModels

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


class LimitConcurrency:
    """At most `limit` embedding requests in flight, counted before their bodies are read; one more
    is a 429 in OpenAI's shape at once (uvicorn's limit_concurrency would answer plain text, and
    count the probes too). /health, /ready and /metrics are never limited."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in _LIMITED_ROUTES:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            response = error_response(
                429,
                f"{self.in_flight} requests are in flight, the most this gateway takes at once; retry shortly",
                "rate_limit_error",
                "too_many_requests",
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


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
    app.add_middleware(LimitConcurrency, limit=settings.max_concurrent_requests)
    return app
