"""Forward to OpenAI-compatible servers (vLLM, TEI, another embedstack) with ordered failover.

An upstream is used only after it has shown, through /v1/models and a probe embedding, that it
serves the configured model id at the configured dimension: vectors of another model would
silently corrupt every index built from them.
"""

from __future__ import annotations

import asyncio
import base64
import logging

import httpx
import numpy as np

from embedstack.config import ModelSpec, Settings, Upstream
from embedstack.engines.base import Input, Item, Output, l2_normalise
from embedstack.errors import ConfigError, EmbedstackError, InvalidInput, QueueFull, Unavailable, UpstreamError

log = logging.getLogger(__name__)

_RETRY_PAUSE = 0.2
_VERIFY_PAUSE = 2.0


class _Retryable(Exception):
    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.status = status


class UpstreamEngine:
    merges = False  # each request goes upstream whole, so its usage stays exact
    concurrency = 32

    def __init__(self, spec: ModelSpec, settings: Settings):
        self.spec = spec
        self.settings = settings
        self.model_name = spec.upstream_model or spec.id
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(settings.upstream_timeout, connect=5.0))
        self._verified: set[str] = set()
        self._first_verified = asyncio.Event()
        self._verifier: asyncio.Task | None = None
        self._fatal: ConfigError | None = None

    @property
    def healthy(self) -> list[Upstream]:
        return [u for u in self.spec.upstreams if u.url in self._verified]

    async def start(self) -> None:
        """Return once one upstream is verified; keep verifying the others in the background.

        An upstream that serves a different model is refused for good, and start() fails.
        """
        self._verifier = asyncio.create_task(self._verify_all())
        waiter = asyncio.create_task(self._first_verified.wait())
        await asyncio.wait({self._verifier, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._fatal:
            raise self._fatal
        if not self._first_verified.is_set():
            self._verifier.result()

    async def close(self) -> None:
        if self._verifier:
            self._verifier.cancel()
        await self._client.aclose()

    async def _verify_all(self) -> None:
        pending = list(self.spec.upstreams)
        while pending:
            for upstream in list(pending):
                try:
                    await self._verify(upstream)
                except _Retryable as exc:
                    log.warning("upstream %s not reachable yet (%s); will retry", upstream.url, exc)
                    continue
                except EmbedstackError as exc:  # wrong model, wrong key, bad answer: never use it
                    self._fatal = ConfigError(exc.message)
                    log.error("%s", exc.message)
                    return
                pending.remove(upstream)
                self._verified.add(upstream.url)
                self._first_verified.set()
                log.info(
                    "upstream %s verified: serves %s at %d dims", upstream.url, self.model_name, self.spec.dimension
                )
            if pending:
                await asyncio.sleep(_VERIFY_PAUSE)

    async def _verify(self, upstream: Upstream) -> None:
        listing = await self._request(upstream, "GET", "/v1/models")
        models = {m.get("id"): m for m in listing.get("data", []) if isinstance(m, dict)}
        if self.model_name not in models:
            raise ConfigError(
                f"upstream {upstream.url} does not serve model {self.model_name!r} (it serves {sorted(models)}); "
                "refusing it, because vectors from another model would corrupt the index"
            )
        probe = await self._embed_once(upstream, ["embedstack dimension probe"])
        dims = probe.vectors.shape[1]
        if dims != self.spec.dimension:
            raise ConfigError(
                f"upstream {upstream.url} serves {self.model_name!r} at {dims} dimensions, "
                f"but this gateway is configured for {self.spec.dimension}; refusing it"
            )

    def batch_cost(self, rows: int, longest: int) -> int:
        return rows * longest

    async def prepare(self, inputs: list[Input], *, truncate: bool, input_type: str) -> list[Item]:
        prefix = self.spec.query_prefix if input_type == "query" else self.spec.document_prefix
        if prefix:
            inputs = [prefix + x if isinstance(x, str) else x for x in inputs]
        # ~4 characters a token: only used to spread work, never reported as usage
        cost = sum(len(x) // 4 + 1 if isinstance(x, str) else len(x) for x in inputs)
        return [Item(payload=inputs, cost=cost, inputs=len(inputs))]

    async def run(self, items: list[Item]) -> list[Output]:
        return [await self._failover(item.payload) for item in items]

    async def _failover(self, inputs: list[Input]) -> Output:
        reasons: list[str] = []
        saw_429 = False
        for attempt in range(self.settings.upstream_retries + 1):
            if attempt:
                await asyncio.sleep(_RETRY_PAUSE * attempt)
            for upstream in self.healthy:
                try:
                    return await self._embed_once(upstream, inputs)
                except _Retryable as exc:
                    saw_429 |= exc.status == 429
                    reasons.append(f"{upstream.url}: {exc}")
                    log.warning("upstream %s failed (%s); trying the next", upstream.url, exc)
        if not self.healthy:
            raise Unavailable(f"no verified upstream for model {self.spec.id!r} yet", code="upstream_unavailable")
        if saw_429 and all("429" in r for r in reasons):
            raise QueueFull("every upstream is overloaded; retry later", code="upstream_overloaded")
        raise Unavailable("every upstream failed: " + "; ".join(reasons[-3:]), code="upstream_unavailable")

    async def _embed_once(self, upstream: Upstream, inputs: list[Input]) -> Output:
        body = {"model": self.model_name, "input": inputs, "encoding_format": "base64"}
        answer = await self._request(upstream, "POST", "/v1/embeddings", json=body)
        try:
            rows = sorted(answer["data"], key=lambda d: d["index"])
            vectors = np.stack([_decode(row["embedding"]) for row in rows])
            tokens = int(answer.get("usage", {}).get("prompt_tokens", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"upstream {upstream.url} sent a malformed embeddings response: {exc}") from None
        if len(rows) != len(inputs):
            raise UpstreamError(f"upstream {upstream.url} returned {len(rows)} vectors for {len(inputs)} inputs")
        return Output(vectors=l2_normalise(vectors), tokens=tokens)

    async def _request(self, upstream: Upstream, method: str, path: str, json: dict | None = None) -> dict:
        headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
        try:
            response = await self._client.request(method, upstream.url + path, json=json, headers=headers)
        except httpx.TransportError as exc:  # connect, read, timeout: the request may be retried elsewhere
            raise _Retryable(type(exc).__name__) from None
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}", response.status_code)
        if response.status_code in (401, 403):
            raise UpstreamError(f"upstream {upstream.url} rejected the gateway's API key (HTTP {response.status_code})")
        if response.status_code >= 400:
            raise InvalidInput(
                f"upstream {upstream.url} refused the request: {_error_message(response)}", param="input"
            )
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(f"upstream {upstream.url} answered {path} with non-JSON") from None


def _decode(embedding: str | list[float]) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def _error_message(response: httpx.Response) -> str:
    try:
        err = response.json().get("error")
        return err.get("message", str(err)) if isinstance(err, dict) else str(err or response.text)
    except ValueError:
        return response.text[:200]
