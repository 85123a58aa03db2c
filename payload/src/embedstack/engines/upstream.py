"""Forward to OpenAI-compatible servers (vLLM, TEI, another embedstack) with ordered failover.

Nothing an upstream says is trusted, at start-up or later. An upstream enters the rotation only
once /v1/models and a probe embedding show the configured model id at the configured dimension,
and every answer is checked again: vector count, indices, dimension, model id, finite values, a
token count that is a count. An upstream that fails through its own fault (transport error, 5xx,
401/403, 404, a malformed, oversized or mismatched answer) leaves the rotation and is re-verified in
the background; the request moves on to the next upstream, all inside one deadline. Vectors of
another shape or model are never returned: they would silently corrupt every index built from them.

Nor is an upstream trusted with sizes: every answer is read up to a bound derived from the request
(an embeddings answer from its inputs and dimension), and what it says in an error reaches clients
and logs cut to one short line. Heartbeats and verification have their own connection pool, and
/tokenize calls a bound on how many run at once, so request traffic never starves the checks that
keep a healthy upstream in the rotation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from dataclasses import dataclass, field

import httpx
import numpy as np
import orjson

from embedstack.config import ModelSpec, Settings, Upstream
from embedstack.engines.base import Input, Item, Output, estimated_tokens, l2_normalise
from embedstack.errors import ConfigError, InvalidInput, QueueFull, Unavailable, UpstreamError

log = logging.getLogger(__name__)

_RETRY_PAUSE = 0.2
_CHECK_PAUSE = 2.0  # between verification attempts and heartbeats
_HEARTBEAT_TIMEOUT = 10.0
# How long a request waits for a dropped upstream to be verified again (a restart, a blip).
_WAIT_FOR_UPSTREAM = 5.0
_PROBE = ["embedstack dimension probe"]
# /tokenize calls in flight to one upstream: vLLM tokenizes on its API server's one event loop, so more at once
# only queue there, while each holds a connection.
_TOKENIZE_CONCURRENCY = 8
# Answer sizes. An embeddings answer may hold every vector as a JSON float list, the largest honest form (the
# gateway asks for base64, ~5.3 bytes a float): at most ~25 bytes a float ("-1.2345678901234567e-05, "),
# allowed 32, plus per row its index and field names, plus the envelope (id, model, usage).
_JSON_FLOAT_BYTES = 32
_ROW_BYTES = 256
_ENVELOPE_BYTES = 64 << 10
_LISTING_BYTES = 1 << 20  # /v1/models: a few hundred bytes a model card
_TOKEN_ID_BYTES = 12  # /tokenize lists every token id
_ERROR_BODY_BYTES = 64 << 10  # read of an error answer; beyond it the body is not needed
_MESSAGE_CHARS = 300  # of an upstream's own words relayed in an error or a log line


class _Failed(Exception):
    """This upstream failed this request. drop: it leaves the rotation until re-verified."""

    def __init__(self, reason: str, *, drop: bool, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.drop = drop
        self.status = status


class _Mismatch(_Failed):
    """The upstream serves another model or dimension."""

    def __init__(self, reason: str):
        super().__init__(reason, drop=True)


class _Refused(_Failed):
    """A 4xx other than auth, 404 or 429: the upstream judged the request itself bad."""

    def __init__(self, reason: str, status: int):
        super().__init__(reason, drop=False, status=status)


class _DeadlineExceeded(Exception):
    pass


@dataclass(slots=True)
class _UpstreamState:
    upstream: Upstream
    verified: bool = False
    reason: str = "not verified yet"
    max_model_len: int | None = None  # vLLM's model card reports it; its truncation may not exceed it
    tokenize_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(_TOKENIZE_CONCURRENCY))


class UpstreamEngine:
    merges = False  # each request goes upstream whole, so its usage stays exact
    concurrency = 32

    def __init__(self, spec: ModelSpec, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        self.spec = spec
        self.settings = settings
        self.model_name = spec.upstream_model or spec.id
        timeout = httpx.Timeout(settings.upstream_timeout, connect=5.0)
        self._client = httpx.AsyncClient(transport=transport, timeout=timeout)
        # Heartbeats and verification: their own pool, so no burst of requests queues them past their timeout.
        self._checks = httpx.AsyncClient(transport=transport, timeout=timeout)
        self._states = [_UpstreamState(u) for u in spec.upstreams]
        self._available = asyncio.Event()  # set while at least one upstream is verified
        self._dropped = asyncio.Event()  # wakes the verifier
        self._verifier: asyncio.Task | None = None
        self._started = False
        self._fatal: ConfigError | None = None
        # The cache keeps each vector with its input's tokens, and vLLM reports one total per request:
        # counting each input costs /tokenize calls, paid only when answers are cached.
        self._counts_inputs = bool(spec.weights) and settings.cache_bytes > 0
        self._miscount_logged = False

    def unavailable_reason(self) -> str | None:
        if self._available.is_set():
            return None
        return "no verified upstream: " + "; ".join(f"{s.upstream.url}: {s.reason}" for s in self._states)

    async def start(self) -> None:
        """Return once one upstream is verified; keep verifying the others in the background.

        An upstream that serves a different model or dimension at start-up is a configuration
        error, and start() fails.
        """
        self._verifier = asyncio.create_task(self._verify_loop(), name=f"verify-{self.spec.id}")
        waiter = asyncio.create_task(self._available.wait())
        await asyncio.wait({self._verifier, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._fatal:
            raise self._fatal
        if not self._available.is_set():
            self._verifier.result()
        self._started = True

    async def close(self) -> None:
        if self._verifier:
            self._verifier.cancel()
        await self._client.aclose()
        await self._checks.aclose()

    # --- verification ---

    async def _verify_loop(self) -> None:
        """Verify what is out of the rotation; check what is in it, so a dead upstream leaves it
        while idle too (and /ready tells the load balancer)."""
        while True:
            self._dropped.clear()
            checks = [self._try_verify(s) for s in self._states if not s.verified]
            if self._started:
                checks += [self._heartbeat(s) for s in self._states if s.verified]
            await asyncio.gather(*checks)
            if self._fatal:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dropped.wait(), _CHECK_PAUSE)

    async def _heartbeat(self, state: _UpstreamState) -> None:
        deadline = asyncio.get_running_loop().time() + _HEARTBEAT_TIMEOUT
        try:
            listing = await self._request(
                state.upstream, "GET", "/v1/models", None, deadline, limit=_LISTING_BYTES, client=self._checks
            )
            if self.model_name not in _served_models(listing):
                raise _Failed(f"upstream {state.upstream.url} no longer serves {self.model_name!r}", drop=True)
        except _DeadlineExceeded:
            self._drop(state, f"upstream {state.upstream.url} did not answer /v1/models in {_HEARTBEAT_TIMEOUT:g} s")
        except _Failed as exc:
            if exc.drop:
                self._drop(state, exc.reason)

    async def _try_verify(self, state: _UpstreamState) -> None:
        url = state.upstream.url
        deadline = asyncio.get_running_loop().time() + self.settings.upstream_timeout
        try:
            await self._verify(state, deadline)
        except ConfigError as exc:
            if not self._started:
                self._fatal = exc
            if state.reason != exc.message:
                log.error("%s", exc.message)
            state.reason = exc.message
            return
        except (_Failed, _DeadlineExceeded) as exc:
            reason = str(exc) or "timed out"
            if state.reason != reason:
                log.warning("upstream %s not usable yet (%s); will retry", url, reason)
            state.reason = reason
            return
        state.verified, state.reason = True, ""
        self._available.set()
        log.info("upstream %s verified: serves %s at %d dims", url, self.model_name, self.spec.dimension)

    async def _verify(self, state: _UpstreamState, deadline: float) -> None:
        url = state.upstream.url
        listing = await self._request(
            state.upstream, "GET", "/v1/models", None, deadline, limit=_LISTING_BYTES, client=self._checks
        )
        models = _served_models(listing)
        if self.model_name not in models:
            served = _clip(", ".join(sorted(map(repr, models))))
            raise ConfigError(
                f"upstream {url} does not serve model {self.model_name!r} (it serves [{served}]); "
                "refusing it, because vectors from another model would corrupt the index"
            )
        max_len = models[self.model_name].get("max_model_len")
        state.max_model_len = max_len if type(max_len) is int and max_len > 0 else None
        try:
            await self._embed_once(state, _PROBE, truncate=True, deadline=deadline, client=self._checks)
        except _Mismatch as exc:
            raise ConfigError(f"{exc.reason}; refusing it") from None

    def _drop(self, state: _UpstreamState, reason: str) -> None:
        if not state.verified:
            return
        state.verified, state.reason = False, reason
        log.warning(
            "upstream %s taken out of rotation (%s); re-verifying it in the background", state.upstream.url, reason
        )
        if not any(s.verified for s in self._states):
            self._available.clear()
        self._dropped.set()

    # --- serving ---

    def cache_fingerprint(self, truncate: bool, input_type: str) -> bytes | None:
        # Without a named revision the weights behind the model id could change unseen: no caching.
        if not self._counts_inputs:
            return None
        spec = self.spec
        prefix = spec.query_prefix if input_type == "query" else spec.document_prefix
        model = (self.model_name, spec.weights, spec.dimension, spec.max_tokens)
        return repr(("upstream", *model, prefix, truncate)).encode()

    def startup_rate(self) -> float | None:
        return None  # the probe is one short input: no measure of what a batch costs

    def batch_cost(self, rows: int, longest: int) -> int:
        return rows * longest

    def estimate_cost(self, inputs: list[Input], input_type: str) -> int:
        prefix = self.spec.query_prefix if input_type == "query" else self.spec.document_prefix
        return sum(estimated_tokens(x, prefix, self.spec.max_tokens) for x in inputs)

    async def prepare(self, inputs: list[Input], *, truncate: bool, input_type: str) -> list[Item]:
        limit = self.spec.max_tokens
        for i, x in enumerate(inputs):
            if isinstance(x, list) and len(x) > limit and not truncate:
                raise _too_long(i, len(x), limit)
        # Token ids are cut here, so no upstream ever sees more than the model takes. vLLM cuts
        # texts itself and does not say which, so only these are counted as truncated.
        truncated = sum(1 for x in inputs if isinstance(x, list) and len(x) > limit)
        if truncate:
            inputs = [x[:limit] if isinstance(x, list) else x for x in inputs]
        prefix = self.spec.query_prefix if input_type == "query" else self.spec.document_prefix
        if prefix:
            inputs = [prefix + x if isinstance(x, str) else x for x in inputs]
        # only used to spread work, never reported as usage
        cost = sum(estimated_tokens(x, "", limit) for x in inputs)
        return [Item(payload=(inputs, truncate), cost=cost, inputs=len(inputs), truncated=truncated)]

    async def run(self, items: list[Item]) -> list[Output]:
        return [await self._failover(*item.payload) for item in items]

    async def _failover(self, inputs: list[Input], truncate: bool) -> Output:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.upstream_timeout
        failures: list[_Failed] = []
        try:
            for round_ in range(self.settings.upstream_retries + 1):
                if round_:
                    await _sleep_until(min(loop.time() + _RETRY_PAUSE * round_, deadline))
                tried: set[int] = set()
                while True:
                    state = next((s for i, s in enumerate(self._states) if s.verified and i not in tried), None)
                    if state is None:
                        if tried or not await self._wait_for_upstream(deadline):
                            break
                        continue
                    tried.add(self._states.index(state))
                    try:
                        return await self._embed_once(
                            state, inputs, truncate=truncate, deadline=deadline, count_each=self._counts_inputs
                        )
                    except _Refused as exc:
                        if not truncate and _is_context_length(exc.reason):
                            raise await self._name_long_input(state, inputs, exc.reason, deadline) from None
                        failures.append(exc)
                    except _Failed as exc:
                        failures.append(exc)
                        if exc.drop:
                            self._drop(state, exc.reason)
                    log.warning("upstream %s failed (%s); trying the next", state.upstream.url, failures[-1].reason)
        except _DeadlineExceeded:
            raise Unavailable(
                f"no upstream answered within {self.settings.upstream_timeout:g} s", code="upstream_timeout"
            ) from None
        if not failures:
            raise Unavailable(self.unavailable_reason() or "no verified upstream", code="upstream_unavailable")
        detail = "; ".join(f.reason for f in failures[-3:])
        if all(f.status == 429 for f in failures):
            raise QueueFull(f"every upstream is overloaded ({detail}); retry later", code="upstream_overloaded")
        if not self._available.is_set():
            raise Unavailable(f"every upstream failed: {detail}", code="upstream_unavailable")
        raise UpstreamError(f"every upstream failed: {detail}", code="upstream_error")

    async def _wait_for_upstream(self, deadline: float) -> bool:
        wait = min(_WAIT_FOR_UPSTREAM, deadline - asyncio.get_running_loop().time())
        try:
            await asyncio.wait_for(self._available.wait(), max(0.0, wait))
        except TimeoutError:
            return False
        return True

    async def _embed_once(
        self,
        state: _UpstreamState,
        inputs: list[Input],
        *,
        truncate: bool,
        deadline: float,
        count_each: bool = False,
        client: httpx.AsyncClient | None = None,
    ) -> Output:
        body: dict = {"model": self.model_name, "input": inputs, "encoding_format": "base64"}
        if truncate and state.max_model_len:  # vLLM refuses long inputs unless asked to truncate
            body["truncate_prompt_tokens"] = min(self.spec.max_tokens, state.max_model_len)
        counting = asyncio.ensure_future(self._count_texts(state, inputs, truncate, deadline)) if count_each else None
        limit = _ENVELOPE_BYTES + len(inputs) * (_ROW_BYTES + self.spec.dimension * _JSON_FLOAT_BYTES)
        try:
            answer = await self._request(
                state.upstream, "POST", "/v1/embeddings", body, deadline, limit=limit, client=client
            )
            output = self._check_answer(state.upstream, answer, inputs)
        except BaseException:
            if counting:
                counting.cancel()
            raise
        if counting:
            output.input_tokens = self._each_input(inputs, await counting, output.tokens)
            # The cache key names max_tokens: only a vector cut there (or not cut) is the one it stands for,
            # and only tokens counted per input can be kept per input.
            output.cacheable = output.input_tokens is not None and self._truncates_at_max_tokens(state)
        return output

    def _truncates_at_max_tokens(self, state: _UpstreamState) -> bool:
        """Whether this upstream cuts inputs exactly where the gateway's max_tokens says (vLLM: it reports its
        max_model_len and takes truncate_prompt_tokens up to it); unknown for servers that report no limit."""
        return state.max_model_len is not None and state.max_model_len >= self.spec.max_tokens

    async def _count_texts(
        self, state: _UpstreamState, inputs: list[Input], truncate: bool, deadline: float
    ) -> dict[int, int] | None:
        """Tokens of each text input, as vLLM's /tokenize counts them (beside the embedding call).

        Only where the upstream truncates at the gateway's max_tokens (it reports max_model_len,
        as vLLM does), so a count is what the vector was made from. None when unknown.
        """
        texts = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        limit = self.spec.max_tokens
        if not self._truncates_at_max_tokens(state):
            return None
        if len(texts) < 2:
            return {}  # one text's count is the total less the token-id inputs
        calls = [asyncio.ensure_future(self._token_count(state, inputs[i], deadline)) for i in texts]
        try:
            counts = dict(zip(texts, await asyncio.gather(*calls), strict=True))
        except (_Failed, _DeadlineExceeded):
            for call in calls:  # one count missing makes the others useless: free their slots
                call.cancel()
            return None  # the answer is served anyway, just not cached
        return {i: min(c, limit) for i, c in counts.items()} if truncate else counts

    def _each_input(self, inputs: list[Input], text_counts: dict[int, int] | None, total: int) -> list[int] | None:
        """Each input's tokens, only when they add up to the usage the upstream reported."""
        if text_counts is None:
            return None
        counts = [len(x) if isinstance(x, list) else text_counts.get(i, 0) for i, x in enumerate(inputs)]
        texts = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        if len(texts) == 1:
            counts[texts[0]] = total - sum(counts)
        if sum(counts) == total and all(c > 0 for c in counts):
            return counts
        if not self._miscount_logged:  # e.g. a tokenizer config /tokenize does not share
            log.warning(
                "upstream token counts (%s) do not add up to its usage (%d tokens): answers of several inputs "
                "are not cached",
                sum(counts),
                total,
            )
            self._miscount_logged = True
        return None

    def _check_answer(self, upstream: Upstream, answer: object, inputs: list[Input]) -> Output:
        url = upstream.url
        n = len(inputs)
        try:
            rows = sorted(answer["data"], key=lambda d: d["index"])  # type: ignore[index]
            if len(rows) != n:
                raise _Failed(f"upstream {url} returned {len(rows)} vectors for {n} inputs", drop=True)
            if [row["index"] for row in rows] != list(range(n)):
                raise _Failed(f"upstream {url} returned indices other than 0..{n - 1}", drop=True)
            vectors = np.stack([_decode(row["embedding"]) for row in rows])
            if vectors.ndim != 2:
                raise ValueError("embeddings are not vectors")
            usage = answer.get("usage") or {}  # type: ignore[union-attr]
            tokens = usage.get("prompt_tokens", 0)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _Failed(
                f"upstream {url} sent a malformed embeddings response ({_clip(str(exc))})", drop=True
            ) from None
        if type(tokens) is not int or not 0 <= tokens <= _most_tokens(inputs):
            raise _Failed(
                f"upstream {url} reported {_clip(repr(tokens))} prompt tokens for {n} inputs: no count of them",
                drop=True,
            )
        if vectors.shape[1] != self.spec.dimension:
            raise _Mismatch(
                f"upstream {url} serves {self.model_name!r} at {vectors.shape[-1]} dimensions, "
                f"but this gateway is configured for {self.spec.dimension}"
            )
        model = answer.get("model")  # type: ignore[union-attr]
        if model is not None and model != self.model_name:
            raise _Mismatch(f"upstream {url} answered with model {_clip(repr(model))} instead of {self.model_name!r}")
        if not np.isfinite(vectors).all():
            raise _Failed(f"upstream {url} returned non-finite values", drop=True)
        # Cacheable only once each input's tokens are known (_embed_once decides).
        return Output(vectors=l2_normalise(vectors), tokens=tokens, cacheable=False)

    async def _name_long_input(self, state: _UpstreamState, inputs: list[Input], reason: str, deadline: float):
        """With truncation off, find which input is too long, as the local engine reports it."""
        limit = min(filter(None, (self.spec.max_tokens, state.max_model_len)))
        for i, x in enumerate(inputs):
            if isinstance(x, list):
                count = len(x)
            else:
                try:
                    count = await self._token_count(state, x, deadline)
                except (_Failed, _DeadlineExceeded):  # no /tokenize: say what the upstream said
                    break
            if count > limit:
                return _too_long(i, count, limit)
        return InvalidInput(
            f"an input is longer than the model's maximum of {limit} tokens, and truncation is switched off "
            f"(upstream: {reason})",
            param="input",
            code="context_length_exceeded",
        )

    async def _token_count(self, state: _UpstreamState, text: str, deadline: float) -> int:
        """How many tokens vLLM makes of `text` (POST /tokenize; special tokens included, as for embeddings).

        At most _TOKENIZE_CONCURRENCY at once per upstream: a request of 2,048 texts would otherwise send 2,048."""
        most = _most_tokens([text])
        async with state.tokenize_slots:
            answer = await self._request(
                state.upstream,
                "POST",
                "/tokenize",
                {"model": self.model_name, "prompt": text},
                deadline,
                limit=_ENVELOPE_BYTES + _TOKEN_ID_BYTES * most,
            )
        count = answer.get("count") if isinstance(answer, dict) else None
        if type(count) is not int or not 0 <= count <= most:
            raise _Failed(f"upstream {state.upstream.url} counted {_clip(repr(count))} tokens", drop=False)
        return count

    async def _request(
        self,
        upstream: Upstream,
        method: str,
        path: str,
        json: dict | None,
        deadline: float,
        *,
        limit: int,
        client: httpx.AsyncClient | None = None,
    ) -> object:
        """Send one call and return its parsed JSON answer, read to at most `limit` bytes."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise _DeadlineExceeded()
        headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
        headers["Accept-Encoding"] = "identity"  # what is counted against the bound is what arrives
        timeout = httpx.Timeout(remaining, connect=min(5.0, remaining))
        url = upstream.url
        try:
            async with (
                asyncio.timeout(remaining),  # the deadline holds whatever the transport does
                (client or self._client).stream(
                    method, url + path, json=json, headers=headers, timeout=timeout
                ) as response,
            ):
                status = response.status_code
                body = await _read_bounded(response, url, path, limit if status < 400 else _ERROR_BODY_BYTES)
        except (TimeoutError, httpx.TimeoutException):
            if deadline - asyncio.get_running_loop().time() <= 0:
                raise _DeadlineExceeded() from None
            raise _Failed(f"upstream {url} timed out", drop=True) from None
        except httpx.TransportError as exc:
            raise _Failed(f"upstream {url}: {type(exc).__name__}", drop=True) from None
        if status == 429:
            raise _Failed(f"upstream {url} is overloaded (HTTP 429)", drop=False, status=429)
        if status >= 500:
            raise _Failed(f"upstream {url} answered HTTP {status}", drop=True, status=status)
        if status in (401, 403):
            raise _Failed(f"upstream {url} rejected the gateway's API key (HTTP {status})", drop=True, status=status)
        if status == 404:
            raise _Failed(f"upstream {url} has no {path} (HTTP 404)", drop=True, status=status)
        if status >= 400:
            raise _Refused(f"upstream {url} refused the request: {_error_message(body)}", status)
        try:
            return orjson.loads(body)  # refuses NaN and Infinity, which no JSON count or vector may hold
        except orjson.JSONDecodeError:
            raise _Failed(f"upstream {url} answered {path} with non-JSON", drop=True) from None


async def _read_bounded(response: httpx.Response, url: str, path: str, limit: int) -> bytes:
    """The body, refused once it passes `limit` bytes; an error answer is only cut there (its start is enough)."""
    error = response.status_code >= 400
    encoding = response.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":  # a small compressed body could inflate past any bound
        if error:
            return b""
        raise _Failed(f"upstream {url} compressed its answer ({_clip(encoding)}) though asked not to", drop=True)
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit and not error:
        raise _Failed(
            f"upstream {url} announced {declared} bytes for {path}, more than the {limit} it may send", drop=True
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():  # identity: the bytes as they arrive
        size += len(chunk)
        if size > limit:
            if error:
                chunks.append(chunk[: len(chunk) - (size - limit)])
                break
            raise _Failed(f"upstream {url} sent more than the {limit} bytes its answer to {path} may have", drop=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _served_models(listing: object) -> dict:
    data = listing.get("data") if isinstance(listing, dict) else None
    return {m.get("id"): m for m in data if isinstance(m, dict)} if isinstance(data, list) else {}


def _most_tokens(inputs: list[Input]) -> int:
    """More tokens than any tokenizer makes of these inputs: token-id lists are their length, and no tokenizer
    makes more than a few tokens of one byte of text (normalisation can expand a character, specials are added)."""
    return sum(len(x) if isinstance(x, list) else 4 * len(x.encode("utf-8", "surrogatepass")) + 64 for x in inputs)


def _clip(text: str) -> str:
    """An upstream's words as one bounded line: it may send megabytes, or line breaks that forge log lines."""
    line = "".join(c if c.isprintable() else " " for c in text[: _MESSAGE_CHARS + 1])
    return line if len(line) <= _MESSAGE_CHARS else line[:_MESSAGE_CHARS] + "..."


def _too_long(index: int, count: int, limit: int) -> InvalidInput:
    return InvalidInput(
        f"input[{index}] has {count} tokens, more than the model's maximum of {limit}, and truncation is switched off",
        param="input",
        code="context_length_exceeded",
    )


def _is_context_length(message: str) -> bool:
    # vLLM (renderers/params.py) and TEI both say so in these words
    text = message.lower()
    return "maximum context length" in text or "must have less than" in text or "too long" in text


async def _sleep_until(when: float) -> None:
    await asyncio.sleep(max(0.0, when - asyncio.get_running_loop().time()))


def _decode(embedding: str | list[float]) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding, validate=True), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def _error_message(body: bytes) -> str:
    """What an error answer says, cut to one short line (vLLM: {"error": {"message", ...}})."""
    try:
        err = orjson.loads(body).get("error")
        text = err.get("message", str(err)) if isinstance(err, dict) else str(err or body.decode(errors="replace"))
    except (orjson.JSONDecodeError, AttributeError):
        text = body[: _MESSAGE_CHARS * 4].decode(errors="replace")
    return _clip(str(text))
