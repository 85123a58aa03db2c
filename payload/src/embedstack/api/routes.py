"""HTTP routes. Errors are raised, never caught here: api/error_responses.py answers them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from embedstack.api.openapi import openapi_document
from embedstack.api.schemas import embeddings_response, parse_embeddings_request
from embedstack.api.tenants import matched_key, offered_keys, tenant_of
from embedstack.config import Settings, operator_keys
from embedstack.core.batcher import Result
from embedstack.core.served_models import ServedModels
from embedstack.errors import (
    AuthenticationFailed,
    BodyTooLarge,
    ClientGone,
    InvalidInput,
    RequestTimeout,
    Unavailable,
)


def _served(request: Request) -> ServedModels:
    return request.app.state.served_models


def authorize(request: Request, keys: frozenset[str]) -> str | None:
    """The key the request offered that the gateway knows; None when the gateway runs open."""
    if not keys:
        return None
    offered = offered_keys(request.headers)
    if not offered:
        raise AuthenticationFailed(
            "missing API key: send 'Authorization: Bearer <key>' or an 'api-key' header", code="missing_api_key"
        )
    matched = matched_key(offered, keys)
    if matched is None:
        raise AuthenticationFailed("incorrect API key provided")
    return matched


async def read_body(request: Request, served: ServedModels, tenant: object) -> bytes:
    """The body, within the size cap, the body deadline and the tenant's upload rate; a drain that starts
    meanwhile answers 503 at once (nothing was accepted yet), and a client that hangs up is a 499, not a
    server error."""
    settings = served.settings
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the request body has {declared} bytes; the limit is {limit}")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if wait := served.upload_rate.delay(tenant, len(chunk)):
                await asyncio.sleep(wait)
        return b"".join(chunks)

    reading = asyncio.ensure_future(read())
    draining = asyncio.ensure_future(served.drain_started.wait())
    try:
        await asyncio.wait({reading, draining}, timeout=settings.body_timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        draining.cancel()
        if not reading.done():
            reading.cancel()
    if not reading.done() or reading.cancelled():
        if served.draining:
            raise Unavailable("the service is draining; retry on another instance", code="draining")
        raise RequestTimeout(f"the request body did not arrive within {settings.body_timeout:g} s")
    try:
        return reading.result()
    except ClientDisconnect:
        raise ClientGone("the client closed the connection while sending its request") from None


# Bodies above this are parsed on a worker thread, one at a time (a Roo Code batch is ~100 KB, parsed in
# ~1 ms inline): a parse holds the GIL only per C call there, and a dozen at once would hold a dozen bodies'
# objects in memory at once.
_PARSE_INLINE_BYTES = 256 << 10


def _refuse_cut_lists(inputs: list, longest: int, limit: int) -> None:
    """With truncation off, name a token-id list the parser cut (it had more than `longest` ids)."""
    for i, x in enumerate(inputs):
        if isinstance(x, list) and len(x) > longest:
            raise InvalidInput(
                f"input[{i}] has more than {longest} tokens, more than the model's maximum of {limit}, "
                "and truncation is switched off",
                param="input",
                code="context_length_exceeded",
            )


CLIENT_CLOSED_REQUEST = 499  # see errors.ClientGone


async def _unless_client_leaves(request: Request, work: Coroutine[Any, Any, Result]) -> Result | None:
    """Run `work`, cancelled if the client hangs up: its queued or held inputs are dropped, not
    embedded for nobody (vLLM's with_cancellation, vllm/entrypoints/utils.py, does the same).
    After the body, the only ASGI message left is http.disconnect (Starlette's
    StreamingResponse.listen_for_disconnect, starlette/responses.py, waits for it the same way)."""

    async def client_left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(client_left())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the handler itself is cancelled: so is its work
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def embeddings(request: Request) -> Response:
    served = _served(request)
    settings = served.settings
    # whose turn it is in the line: the key, or the client's address on an open gateway
    tenant = authorize(request, settings.api_keys) or tenant_of(request.scope, settings.api_keys)
    if served.draining:
        raise Unavailable("the service is draining; retry on another instance", code="draining")
    if not served.ready:
        raise Unavailable("the model is still loading; retry shortly", code="not_ready")
    started = time.perf_counter()
    served.enter()
    try:
        body = await read_body(request, served, tenant)
        longest = served.longest_max_tokens
        parse = functools.partial(
            parse_embeddings_request, max_inputs=settings.max_inputs_per_request, max_tokens=longest
        )
        if len(body) > _PARSE_INLINE_BYTES:
            async with served.large_parse:
                req = await asyncio.to_thread(parse, body)
        else:
            async with served.parse_turn:
                # Bodies that arrive together (a hundred connections' worth) are parsed one per turn of the
                # loop, and /ready and other clients' requests are answered between two of them, not after all.
                await asyncio.sleep(0)
                req = parse(body)
        if req.replaced_surrogates:
            served.metrics.lone_surrogates.inc(req.replaced_surrogates)
        batcher = served.resolve(req.model)
        spec = batcher.engine.spec
        if not settings.truncate:
            _refuse_cut_lists(req.inputs, longest, spec.max_tokens)
        if req.dimensions is not None and req.dimensions > spec.dimension:
            raise InvalidInput(
                f"'dimensions' is {req.dimensions}, above the native {spec.dimension} of model {spec.id!r}",
                param="dimensions",
            )
        # The body names the request: a client retrying after a 429 sends it again and claims its booking;
        # per tenant, so another key sending the same body does not take this one's place.
        key = (tenant, hashlib.blake2b(body, digest_size=16).digest())
        work = batcher.embed(req.inputs, truncate=settings.truncate, input_type=req.input_type, key=key, tenant=tenant)
        result = await _unless_client_leaves(request, work)
        if result is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        payload = embeddings_response(req, result.vectors, result.prompt_tokens, spec.dimension)
        served.metrics.latency.labels(spec.id).observe(time.perf_counter() - started)
        return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
    finally:
        served.leave()


async def models(request: Request) -> Response:
    authorize(request, _served(request).settings.api_keys)
    data = []
    for spec in _served(request).specs:
        for name in spec.names:
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": spec.owned_by,
                    "root": spec.id,
                    "dimension": spec.dimension,
                    "max_tokens": spec.max_tokens,
                    "engine": spec.engine,
                }
            )
    return JSONResponse({"object": "list", "data": data})


async def openapi(request: Request) -> Response:
    served = _served(request)
    return JSONResponse(openapi_document(served.settings, served.specs))


async def health(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


# The most of a boot-failure file /ready reads and repeats.
_BOOT_FAILURE_BYTES = 1024


def _boot_failure(path: Path | None) -> str | None:
    """The reason recorded in the boot-failure file, or None when there is no such file."""
    if path is None:
        return None
    try:
        with path.open("rb") as f:
            text = f.read(_BOOT_FAILURE_BYTES).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"a boot failure is recorded in {path}, which cannot be read ({exc.strerror})"
    return text or f"a boot failure is recorded in {path}"


def _sees_details(request: Request, settings: Settings) -> bool:
    """Whether the request may read operational detail (/metrics, upstream URLs and reasons in /ready)."""
    keys = operator_keys(settings)
    if keys is None:
        return True
    try:
        authorize(request, keys)
    except AuthenticationFailed:  # no key, or a wrong one, is no error here: it only sees less
        return False
    return True


async def ready(request: Request) -> Response:
    """200 or 503 for anyone (load balancers and autohealing send no key); the why only for operators."""
    served = _served(request)
    if served.draining:
        raise Unavailable("draining", code="draining")
    details = _sees_details(request, served.settings)
    if (failure := _boot_failure(served.settings.boot_failure_file)) is not None:
        reason = f": {failure}" if details else ""
        raise Unavailable(f"this host cannot serve, its boot failed{reason}", code="boot_failed")
    if not served.ready:
        raise Unavailable("the model is still loading", code="not_ready")
    reasons = [f"{b.engine.spec.id}: {r}" for b in served.batchers.values() if (r := b.engine.unavailable_reason())]
    if reasons:  # load balancers and autohealing act on this
        message = "; ".join(reasons) if details else "a model has no verified upstream"
        raise Unavailable(message, code="upstream_unavailable")
    return JSONResponse({"status": "ready", "models": sorted(served.batchers)} if details else {"status": "ready"})


async def metrics(request: Request) -> Response:
    served = _served(request)
    keys = operator_keys(served.settings)
    if keys is not None:
        authorize(request, keys)
    return Response(served.metrics.render(), media_type="text/plain; version=0.0.4")


ROUTES = [
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/models", models, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
