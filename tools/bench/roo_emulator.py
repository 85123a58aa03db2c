"""Roo Code's code indexer as an embeddings client: its retry and backoff policy, rule by rule.

Read from RooCodeInc/Roo-Code at commit cb83656 (openai 5.12.2 in its pnpm-lock.yaml) and from
openai/openai-node at tag v5.12.2. Line numbers below are of those files at those commits; no code
of theirs is copied here, only the rules.

Roo's embedder, `src/services/code-index/embedders/openai-compatible.ts` ("oc.ts" below):
  oc.ts:73-76    the OpenAI SDK client is built with only baseURL and apiKey: the SDK's defaults apply.
  oc.ts:178-192  a base URL matching /embeddings(?|$) (or /embed, Azure deployments, Databricks) is a
                 "full URL": requests go by plain fetch (oc.ts:202-248), not through the SDK.
  oc.ts:207-221  full-URL request: POST with `api-key` and `Authorization: Bearer`, body
                 {input, model, encoding_format: "base64"}; no timeout, no retry of its own. What
                 still applies is Node's fetch (undici): 300 s for the response headers and 300 s
                 between body chunks (headersTimeout/bodyTimeout, nodejs/undici#1937); emulated
                 here as httpx's read timeout of 300 s.
  oc.ts:223-238  any non-2xx becomes an error carrying the status.
  oc.ts:275-282  SDK path: `embeddings.create({input, model, encoding_format: "base64"})`.
  oc.ts:126-167  a call is split into requests of at most MAX_BATCH_TOKENS estimated tokens (length/4);
                 a 60-chunk batch of ~1,000 characters is ~15,000: one request.
  oc.ts:263      MAX_RETRIES attempts per request (constants/index.ts:20: MAX_BATCH_RETRIES = 3).
  oc.ts:265      every attempt first waits for the process-wide rate limit (waitForGlobalRateLimit).
  oc.ts:326      only an error whose status is 429 is retried by Roo ...
  oc.ts:328      ... after updating the global state;
  oc.ts:330-344  if attempts remain, it sleeps max(INITIAL_RETRY_DELAY_MS * 2^attempt, the global
                 delay left) (constants/index.ts:21: 500 ms) and tries again;
  oc.ts:352      any other error, and a 429 on the last attempt, fails the call
                 ("Failed to create embeddings after 3 attempts: HTTP 429").
  oc.ts:44-51    the global state is a static of the class: one per extension host process, shared by
                 every batch and every workspace of that process. One RooClient here is one process.
  oc.ts:417-443  waitForGlobalRateLimit: if limited and the reset time is ahead, sleep until it once and
                 return (no re-check); if limited and the reset time has passed, clear the flag and the
                 consecutive count.
  oc.ts:448-477  updateGlobalRateLimitState: the consecutive count goes up by one if the previous 429
                 was less than 60 s ago, else restarts at 1; the limit lasts 5 s * 2^(count-1), at most
                 300 s, from now.
  oc.ts:482-495  getGlobalRateLimitDelay: the time left until the reset, or 0.

Roo's scanner, `src/services/code-index/processors/scanner.ts`:
  scanner.ts:115        batches run through pLimit(BATCH_PROCESSING_CONCURRENCY): at most 10 in flight
                        (constants/index.ts:28).
  scanner.ts:185        a batch is cut at batchSegmentThreshold blocks: 60 by default (constants:19,
                        setting `codeIndex.embeddingBatchSize`, scanner.ts:45-56).
  constants/index.ts:4  blocks are at most MAX_BLOCK_CHARS = 1,000 characters.
  scanner.ts:401-495    processBatch itself retries the WHOLE batch (createEmbeddings + upsert), on any
                        error, up to MAX_BATCH_RETRIES = 3 times, sleeping 500 ms * 2^(n-1) between
                        (scanner.ts:491-494). So a workspace scan loses a batch only after 3 failed
                        createEmbeddings calls of up to 3 attempts each. The issue ran the embedder alone
                        (3 attempts, then lost); `scanner_retries=True` adds the scanner's layer.

The OpenAI SDK (Node, openai-node v5.12.2 `src/client.ts`), on Roo's SDK path:
  client.ts:374      maxRetries defaults to 2 (3 requests in all);
  client.ts:364,922  timeout defaults to 600 s (per attempt), but the SDK calls the same undici fetch,
                     so no answer within 300 s fails the attempt first, as a connection error;
  client.ts:741-762  shouldRetry: `x-should-retry: true|false` decides if present; else 408, 409, 429
                     and >= 500 are retried;
  client.ts:566-611  connection errors and timeouts are retried too;
  client.ts:772-790  the wait is `retry-after-ms`, else `retry-after` (seconds, or an HTTP date);
  client.ts:794-797  honoured only when 0 < wait < 60 s; otherwise 0.5 s * 2^n (at most 8 s) with up to
                     25 % jitter off (client.ts:803-816), and the request is still retried.

This module drives the official Python SDK (openai.AsyncOpenAI, max_retries=2, timeout=600 with a
300 s read timeout for undici's), which retries the same statuses and connection errors. Where the
installed Python SDK (openai 3.51.0) differs from Node's: it honours Retry-After up to 120 s, not
below 60 s (`_constants.py:15`, `_base_client.py:905-909`), and it does not retry at all when
Retry-After is above 120 s (`_base_client.py:922-930`), where Node retries after its own 0.5-8 s
backoff. Those two methods are overridden below (`NodeRetryAsyncOpenAI`) with Node's rules, so a
gateway that answers Retry-After: 90 sees what Roo would do: a retry within a second or so. Every
request, the SDK's own retries included, is counted by a response hook on the httpx2 client given
to the SDK.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import email.utils
import math
import random
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

# Roo's constants (src/services/code-index/constants/index.ts at cb83656).
BATCH_SEGMENT_THRESHOLD = 60  # :19
MAX_BATCH_RETRIES = 3  # :20
INITIAL_RETRY_DELAY_S = 0.5  # :21
BATCH_PROCESSING_CONCURRENCY = 10  # :28
# Node's fetch (undici) waits at most 300 s for response headers and between body chunks.
UNDICI_READ_TIMEOUT_S = 300.0
# The global rate limit (openai-compatible.ts:455, :465-466).
RATE_LIMIT_WINDOW_S = 60.0
RATE_LIMIT_BASE_S = 5.0
RATE_LIMIT_MAX_S = 300.0

SDK = "sdk"
FULL_URL = "full-url"
PATHS = (SDK, FULL_URL)


# --- the global rate limit: one per Roo process ---------------------------------------------------


class GlobalRateLimit:
    """`globalRateLimitState` (openai-compatible.ts:44-51) and the three methods on it."""

    def __init__(self) -> None:
        self.is_rate_limited = False
        self.reset_time = 0.0
        self.consecutive = 0
        self.last_error = -math.inf  # Date.now() - 0 is always > 60 s in Roo: the count starts at 1
        self._mutex = asyncio.Lock()

    async def wait(self) -> None:
        """waitForGlobalRateLimit (oc.ts:417-443): one sleep until the reset, no re-check."""
        async with self._mutex:
            now = time.monotonic()
            if self.is_rate_limited and self.reset_time > now:
                wait = self.reset_time - now
            else:
                wait = 0.0
                if self.is_rate_limited:  # the reset time has passed (oc.ts:431-434)
                    self.is_rate_limited = False
                    self.consecutive = 0
        if wait:  # the mutex is released before sleeping (oc.ts:425)
            await asyncio.sleep(wait)

    async def update(self) -> None:
        """updateGlobalRateLimitState (oc.ts:448-477), on every 429 that reaches Roo's wrapper."""
        async with self._mutex:
            now = time.monotonic()
            self.consecutive = self.consecutive + 1 if now - self.last_error < RATE_LIMIT_WINDOW_S else 1
            self.last_error = now
            delay = min(RATE_LIMIT_BASE_S * 2 ** (self.consecutive - 1), RATE_LIMIT_MAX_S)
            self.is_rate_limited = True
            self.reset_time = now + delay

    async def delay(self) -> float:
        """getGlobalRateLimitDelay (oc.ts:482-495)."""
        async with self._mutex:
            left = self.reset_time - time.monotonic()
            return left if self.is_rate_limited and left > 0 else 0.0


# --- the OpenAI SDK with Node's retry rules --------------------------------------------------------

_LEADING_FLOAT = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _parse_float(value: str) -> float:
    """JavaScript's parseFloat: the longest leading number, NaN if none."""
    found = _LEADING_FLOAT.match(value)
    return float(found.group()) if found else math.nan


def node_retry_seconds(headers: Any, retries_remaining: int, max_retries: int) -> float:
    """How long openai-node 5.12.2 sleeps before a retry (client.ts:764-816)."""
    wait_ms: float | None = None
    header = headers.get("retry-after-ms") if headers is not None else None
    if header:
        parsed = _parse_float(header)
        if not math.isnan(parsed):
            wait_ms = parsed
    header = headers.get("retry-after") if headers is not None else None
    if header and not wait_ms:
        seconds = _parse_float(header)
        if not math.isnan(seconds):
            wait_ms = seconds * 1000
        else:
            try:
                wait_ms = email.utils.parsedate_to_datetime(header).timestamp() * 1000 - time.time() * 1000
            except (TypeError, ValueError):
                wait_ms = None  # Date.parse gives NaN, and NaN is not honoured
    if not (wait_ms and 0 <= wait_ms < 60_000):
        retries = max_retries - retries_remaining
        wait_ms = min(0.5 * 2**retries, 8.0) * (1 - random.random() * 0.25) * 1000
    return wait_ms / 1000


class NodeRetryAsyncOpenAI(openai.AsyncOpenAI):
    """openai.AsyncOpenAI deciding whether and when to retry as openai-node 5.12.2 does."""

    def _should_retry(self, response: Any) -> bool:  # client.ts:741-762
        should = response.headers.get("x-should-retry")
        if should in ("true", "false"):
            return should == "true"
        return response.status_code in (408, 409, 429) or response.status_code >= 500

    def _calculate_retry_timeout(self, remaining_retries: int, options: Any, response_headers: Any = None) -> float:
        max_retries = options.get_max_retries(self.max_retries)
        return node_retry_seconds(response_headers, remaining_retries, max_retries)


# --- one batch's record ----------------------------------------------------------------------------


@dataclass
class BatchOutcome:
    client: int
    index: int
    size: int
    state: str = "pending"  # ok | lost | unfinished (cut by the run's deadline)
    attempts: int = 0  # attempts by Roo's wrapper (oc.ts:263), over all scanner tries
    requests: int = 0  # HTTP requests sent, the SDK's own retries included
    rate_limited: int = 0  # 429 answers seen, the SDK's own retries included
    statuses: list[int] = field(default_factory=list)
    retry_after: list[str] = field(default_factory=list)  # Retry-After of each 429
    embed_failures: int = 0  # createEmbeddings calls that threw (each one a "Failed ... 3 attempts" error)
    error: str = ""
    started: float = 0.0  # monotonic, when the batch got one of the 10 slots
    finished: float = 0.0

    @property
    def latency(self) -> float:
        return self.finished - self.started


_current: contextvars.ContextVar[BatchOutcome | None] = contextvars.ContextVar("roo_batch", default=None)


def _count_response(status: int, headers: Any) -> None:
    outcome = _current.get()
    if outcome is None:
        return
    outcome.requests += 1
    outcome.statuses.append(status)
    if status == 429:
        outcome.rate_limited += 1
        outcome.retry_after.append(headers.get("retry-after", ""))


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _check_vectors(data: Sequence[Any], expected: int, dimension: int | None) -> None:
    if len(data) != expected:
        raise _HttpError(0, f"200 with {len(data)} embeddings for {expected} inputs")
    if dimension is not None:
        for item in data:
            raw = item["embedding"] if isinstance(item, dict) else item.embedding
            size = len(base64.b64decode(raw)) // 4 if isinstance(raw, str) else len(raw)
            if size != dimension:
                raise _HttpError(0, f"200 with a {size}-dim embedding, not {dimension}")


# --- one Roo process ---------------------------------------------------------------------------------


class RooClient:
    """One Roo Code process indexing one workspace: its own global rate limit, 10 batches in flight.

    path: "sdk" (base URL .../v1, the OpenAI SDK) or "full-url" (base URL .../v1/embeddings, fetch).
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        path: str = SDK,
        api_key: str = "roo-emulator",
        client_id: int = 0,
        concurrency: int = BATCH_PROCESSING_CONCURRENCY,
        scanner_retries: bool = False,
        dimension: int | None = None,
    ):
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, not {path!r}")
        self.url = url.rstrip("/")
        self.model = model
        self.path = path
        self.api_key = api_key
        self.client_id = client_id
        self.concurrency = concurrency
        self.scanner_retries = scanner_retries
        self.dimension = dimension
        self.rate_limit = GlobalRateLimit()

    async def index(self, batches: Sequence[Sequence[str]], deadline: float | None = None) -> list[BatchOutcome]:
        """Embed every batch as Roo's scanner does; stop at `deadline` (monotonic), leaving the rest
        "unfinished". Returns one outcome per batch, in order."""
        outcomes = [BatchOutcome(self.client_id, i, len(b)) for i, b in enumerate(batches)]
        slots = asyncio.Semaphore(self.concurrency)  # pLimit(10), FIFO like p-limit's queue

        async def hook(response: Any) -> None:
            _count_response(response.status_code, response.headers)

        if self.path == SDK:
            http = openai.DefaultAsyncHttpxClient(event_hooks={"response": [hook]})
            sdk = NodeRetryAsyncOpenAI(
                base_url=self.url + "/v1",
                api_key=self.api_key,
                max_retries=2,
                timeout=openai.Timeout(600, connect=5.0, read=UNDICI_READ_TIMEOUT_S),
                http_client=http,
            )
            send = self._sdk_sender(sdk)
            closer = sdk.close
        else:
            # fetch: no timeout of Roo's, no retries, connection reuse (undici's keep-alive).
            timeout = httpx.Timeout(None, read=UNDICI_READ_TIMEOUT_S)
            plain = httpx.AsyncClient(timeout=timeout, event_hooks={"response": [hook]})
            send = self._fetch_sender(plain)
            closer = plain.aclose

        async def run(batch: Sequence[str], outcome: BatchOutcome) -> None:
            async with slots:
                _current.set(outcome)
                outcome.started = time.monotonic()
                try:
                    await self._process_batch(list(batch), outcome, send)
                finally:
                    outcome.finished = time.monotonic()

        tasks = [asyncio.create_task(run(b, o)) for b, o in zip(batches, outcomes, strict=True)]
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await closer()
        for outcome in outcomes:
            if outcome.state == "pending":
                outcome.state = "unfinished"
                outcome.finished = outcome.finished or time.monotonic()
                outcome.started = outcome.started or outcome.finished
        return outcomes

    # -- Roo's two layers ----------------------------------------------------------------------------

    async def _process_batch(self, texts: list[str], outcome: BatchOutcome, send: Any) -> None:
        """scanner.ts:401-495 with scanner_retries, else the embedder alone (as in the issue)."""
        tries = MAX_BATCH_RETRIES if self.scanner_retries else 1
        for attempt in range(1, tries + 1):
            try:
                await self._create_embeddings(texts, outcome, send)
                outcome.state = "ok"
                return
            except Exception as exc:  # any error at all (scanner.ts:477)
                outcome.embed_failures += 1
                outcome.error = f"{type(exc).__name__}: {exc}"[:300]
                if attempt < tries:
                    await asyncio.sleep(INITIAL_RETRY_DELAY_S * 2 ** (attempt - 1))  # scanner.ts:491-494
        outcome.state = "lost"

    async def _create_embeddings(self, texts: list[str], outcome: BatchOutcome, send: Any) -> None:
        """_embedBatchWithRetries (oc.ts:256-357) for one request of the batch."""
        for attempt in range(MAX_BATCH_RETRIES):
            await self.rate_limit.wait()  # oc.ts:265
            outcome.attempts += 1
            try:
                await send(texts)
                return
            except Exception as exc:  # oc.ts:313
                status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
                if status == 429:  # oc.ts:326
                    await self.rate_limit.update()  # oc.ts:328
                    if attempt < MAX_BATCH_RETRIES - 1:  # oc.ts:322, :330
                        delay = max(INITIAL_RETRY_DELAY_S * 2**attempt, await self.rate_limit.delay())
                        await asyncio.sleep(delay)  # oc.ts:332-343
                        continue
                raise  # oc.ts:352
        raise RuntimeError(f"Failed to create embeddings after {MAX_BATCH_RETRIES} attempts")  # oc.ts:356

    # -- the two transports --------------------------------------------------------------------------

    def _sdk_sender(self, sdk: openai.AsyncOpenAI) -> Any:
        async def send(texts: list[str]) -> None:
            response = await sdk.embeddings.create(input=texts, model=self.model, encoding_format="base64")
            _check_vectors(response.data, len(texts), self.dimension)

        return send

    def _fetch_sender(self, client: httpx.AsyncClient) -> Any:
        headers = {
            "Content-Type": "application/json",
            "api-key": self.api_key,
            "Authorization": f"Bearer {self.api_key}",
        }
        endpoint = self.url + "/v1/embeddings"

        async def send(texts: list[str]) -> None:
            body = {"input": texts, "model": self.model, "encoding_format": "base64"}
            response = await client.post(endpoint, json=body, headers=headers)
            if response.status_code // 100 != 2:  # oc.ts:223-238
                raise _HttpError(response.status_code, f"HTTP {response.status_code}: {response.text[:200]}")
            _check_vectors(response.json()["data"], len(texts), self.dimension)

        return send


# --- workloads and figures -------------------------------------------------------------------------


def roo_chunks(count: int, skip: int = 0) -> list[str]:
    """`count` code chunks of about 1,000 characters (Roo's MAX_BLOCK_CHARS), cut from the stdlib by
    gateway_bench's cutter; `skip` leaves out the first ones, so separate runs get fresh text (the
    gateway caches vectors by content)."""
    from gateway_bench import load_chunks

    return load_chunks(skip + count)[skip:]


def split_batches(chunks: Sequence[str], size: int = BATCH_SEGMENT_THRESHOLD) -> list[list[str]]:
    return [list(chunks[i : i + size]) for i in range(0, len(chunks), size)]


async def run_clients(
    url: str,
    model: str,
    workloads: Sequence[Sequence[Sequence[str]]],
    *,
    path: str,
    deadline_s: float | None = None,
    **client_kwargs: Any,
) -> tuple[list[BatchOutcome], float]:
    """One RooClient per workload, all indexing at once. Returns every outcome and the wall time
    until the last batch ended (or the deadline)."""
    started = time.monotonic()
    deadline = None if deadline_s is None else started + deadline_s
    clients = [RooClient(url, model, path=path, client_id=i, **client_kwargs) for i in range(len(workloads))]
    results = await asyncio.gather(*(c.index(w, deadline) for c, w in zip(clients, workloads, strict=True)))
    return [o for result in results for o in result], time.monotonic() - started


async def measure_throughput(
    url: str, model: str, batches: Sequence[Sequence[str]], in_flight: int = 4, api_key: str = "roo-emulator"
) -> float:
    """Chunks/s of one well-behaved client keeping the queue full: `in_flight` batches at a time, each
    refusal (429/503) waited out for its Retry-After and sent again."""
    queue = list(batches)
    headers = {"Authorization": f"Bearer {api_key}"}

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            batch = queue.pop(0)
            while True:
                response = await client.post(
                    url + "/v1/embeddings", json={"input": batch, "model": model, "encoding_format": "base64"}
                )
                if response.status_code == 200:
                    _check_vectors(response.json()["data"], len(batch), None)
                    break
                if response.status_code in (429, 503):
                    wait = _parse_float(response.headers.get("retry-after", "1"))
                    await asyncio.sleep(1.0 if math.isnan(wait) else max(0.1, wait))
                    continue
                raise RuntimeError(f"throughput run: HTTP {response.status_code}: {response.text[:200]}")

    started = time.monotonic()
    async with httpx.AsyncClient(timeout=600, headers=headers) as client:
        await asyncio.gather(*(worker(client) for _ in range(in_flight)))
    return sum(len(b) for b in batches) / (time.monotonic() - started)


@dataclass
class Figures:
    batches: int
    ok: int
    lost: int
    unfinished: int
    embed_failures: int
    rate_limited: int  # 429s sent by the gateway
    requests: int
    retry_after: dict[str, int]
    seconds: float
    ideal_seconds: float
    p50: float
    p95: float

    @property
    def ratio(self) -> float:
        return self.seconds / self.ideal_seconds

    def line(self) -> str:
        return (
            f"{self.ok}/{self.batches} batches ok, {self.lost} lost, {self.unfinished} unfinished; "
            f"{self.rate_limited} 429s of {self.requests} requests (Retry-After {self.retry_after}); "
            f"{self.seconds:.1f} s vs ideal {self.ideal_seconds:.1f} s = {self.ratio:.2f}x; "
            f"batch latency p50 {self.p50:.1f} s, p95 {self.p95:.1f} s"
        )


def figures(outcomes: Sequence[BatchOutcome], seconds: float, chunks_per_s: float) -> Figures:
    latencies = sorted(o.latency for o in outcomes if o.state == "ok") or [math.nan]
    retry_after: dict[str, int] = {}
    for o in outcomes:
        for value in o.retry_after:
            retry_after[value] = retry_after.get(value, 0) + 1
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) > 1 else latencies[0]
    return Figures(
        batches=len(outcomes),
        ok=sum(o.state == "ok" for o in outcomes),
        lost=sum(o.state == "lost" for o in outcomes),
        unfinished=sum(o.state == "unfinished" for o in outcomes),
        embed_failures=sum(o.embed_failures for o in outcomes),
        rate_limited=sum(o.rate_limited for o in outcomes),
        requests=sum(o.requests for o in outcomes),
        retry_after=dict(sorted(retry_after.items())),
        seconds=seconds,
        ideal_seconds=sum(o.size for o in outcomes) / chunks_per_s,
        p50=statistics.median(latencies),
        p95=p95,
    )
