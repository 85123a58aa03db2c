"""create_app(settings): the Starlette application factory."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedstack.api.errors import HANDLERS
from embedstack.api.routes import ROUTES
from embedstack.config import Settings
from embedstack.metrics import Metrics
from embedstack.service import Gateway

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


class CloseWhenDraining:
    """While draining, answer with Connection: close so clients reconnect elsewhere
    instead of reusing a keep-alive connection that is about to be shut."""

    def __init__(self, app: ASGIApp, gateway: Gateway):
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and self.gateway.draining:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing_send)


class GatewayApp(Starlette):
    def __init__(self, *args, metrics: Metrics, **kwargs):
        self.metrics = metrics
        super().__init__(*args, **kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        return CountRequests(super().build_middleware_stack(), self.metrics)


def create_app(settings: Settings) -> Starlette:
    metrics = Metrics()
    gateway = Gateway(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        # Load models in the background so /health answers while they load.
        loading = asyncio.create_task(gateway.start(), name="load-models")
        yield
        loading.cancel()
        await gateway.close()

    app = GatewayApp(routes=ROUTES, exception_handlers=HANDLERS, lifespan=lifespan, metrics=metrics)
    app.state.gateway = gateway
    app.add_middleware(CloseWhenDraining, gateway=gateway)
    return app
