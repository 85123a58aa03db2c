"""An in-process stand-in for vLLM's OpenAI-compatible pooling server, as an httpx transport.

Only the behaviour the upstream engine relies on, each taken from vLLM 0.32's source:
- GET /v1/models lists ModelCards with `owned_by: "vllm"` and `max_model_len`
  (vllm/entrypoints/serve/engine/protocol.py, ModelCard).
- POST /v1/embeddings answers `{"object": "list", "model", "data": [{"index", "embedding"}],
  "usage": {"prompt_tokens", "total_tokens"}}`; base64 is little-endian float32
  (vllm/entrypoints/pooling/embed/protocol.py, serving.py).
- An input over max_model_len is refused with 400 "This model's maximum context length is N
  tokens. However, your prompt contains at least M input tokens ..." unless the request carries
  `truncate_prompt_tokens` (vllm/renderers/params.py, _token_len_check); truncate_prompt_tokens
  must be -1 or at most max_model_len, else 400 (params.py __post_init__).
- POST /tokenize answers `{"count", "max_model_len", "tokens"}`
  (vllm/entrypoints/serve/tokenize/protocol.py).
- GET /health is 200 with an empty body.
- Errors are `{"error": {"message", "type", "param", "code"}}` (vllm/entrypoints/openai/engine/protocol.py,
  ErrorResponse/ErrorInfo); `usage.prompt_tokens` is an int (same file, UsageInfo); /tokenize answers carry
  every token id (TokenizeResponse.tokens), so their size grows with the prompt.

Faults beyond that are what a broken or hostile server could send, never what vLLM sends: an answer
that never ends, usage of `Infinity` (Python's json writes it, vLLM's pydantic never does), a
megabyte error message.

Tokens are whitespace-separated words plus [CLS] and [SEP], and vectors are seeded by the text:
the tests check what the gateway does with answers, not what a model computes (tests/vllm runs
the real vLLM for that).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections import Counter

import httpx
import numpy as np


def tokens_of(item: str | list[int]) -> int:
    return len(item) if isinstance(item, list) else len(item.split()) + 2


def vector_of(item: str | list[int], dimension: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(str(item).encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeVllm:
    """One fake vLLM server; `fault` makes it misbehave in one named way:
    - "tokenize-miscounts": /tokenize counts one token more than /v1/embeddings uses, as a tokenizer setting
      only one of them applies would;
    - "endless": /v1/embeddings answers 200 and a JSON body that never ends (`sent` counts what went out);
    - "usage:<json>": /v1/embeddings reports that raw JSON as `usage.prompt_tokens` (e.g. "usage:Infinity");
    - "tokenize:<json>": /tokenize reports that raw JSON as its `count`;
    - "long-error": a 400 whose message is a megabyte, line breaks included.
    `tokenize_delay` makes every /tokenize take that long; `in_flight` and `most_in_flight` count requests by path.
    """

    def __init__(self, model: str = "m", dimension: int = 8, max_model_len: int = 16):
        self.model = model
        self.dimension = dimension
        self.max_model_len = max_model_len
        self.fault: str | None = None
        self.requests: list[tuple[str, dict | None]] = []
        self.tokenize_delay = 0.0
        self.sent = 0  # bytes of the endless answer handed out
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight: Counter[str] = Counter()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.in_flight[path] += 1
        self.most_in_flight[path] = max(self.most_in_flight[path], self.in_flight[path])
        try:
            return await self._answer(request)
        finally:
            self.in_flight[path] -= 1

    async def _answer(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.url.path, body))
        fault = self.fault
        if fault == "hang":
            await asyncio.sleep(30)
        if fault == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if fault in ("400", "401", "404", "429", "500"):
            return httpx.Response(int(fault), json={"error": {"message": f"fault {fault}"}})
        if fault == "long-error":
            message = "bad input\n2026-01-01 forged log line\n" + "x" * (1 << 20)
            return _refuse(message)
        if request.url.path == "/v1/models":
            card = {"id": self.model, "object": "model", "owned_by": "vllm", "max_model_len": self.max_model_len}
            return httpx.Response(200, json={"object": "list", "data": [card]})
        if request.url.path == "/tokenize":
            await asyncio.sleep(self.tokenize_delay)
            count = tokens_of(body["prompt"]) + (1 if fault == "tokenize-miscounts" else 0)
            answer = json.dumps({"count": count, "max_model_len": self.max_model_len, "tokens": []})
            if fault and fault.startswith("tokenize:"):
                answer = answer.replace(f'"count": {count}', f'"count": {fault.removeprefix("tokenize:")}')
            return httpx.Response(200, content=answer, headers={"content-type": "application/json"})
        if request.url.path == "/v1/embeddings":
            if fault == "endless":
                return httpx.Response(200, headers={"content-type": "application/json"}, content=self._endless())
            return self.embeddings(body)
        return httpx.Response(404, json={"detail": "Not Found"})

    async def _endless(self):
        yield b'{"object": "list", "id": "'
        while True:
            chunk = b"x" * 65536
            self.sent += len(chunk)
            yield chunk
            await asyncio.sleep(0.001)  # at most ~64 MB/s, so a reader without a bound fills memory slowly

    async def asgi(self, scope, receive, send) -> None:
        """The same server as an ASGI app, for a real HTTP server on loopback (uvicorn)."""
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        url = f"http://{scope['server'][0]}:{scope['server'][1]}{scope['path']}"
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"]]
        response = await self.handle(httpx.Request(scope["method"], url, headers=headers, content=body))
        await response.aread()
        await send({"type": "http.response.start", "status": response.status_code, "headers": response.headers.raw})
        await send({"type": "http.response.body", "body": response.content})

    def embeddings(self, body: dict) -> httpx.Response:
        truncate = body.get("truncate_prompt_tokens")
        if truncate is not None and truncate > self.max_model_len:
            return _refuse(f"truncate_prompt_tokens={truncate} cannot be greater than max_model_len")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        counts = [tokens_of(x) for x in inputs]
        if truncate is None and max(counts) > self.max_model_len:
            return _refuse(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt "
                f"contains at least {self.max_model_len + 1} input tokens, which exceeds this limit even "
                "without any output tokens. Please reduce the length of the input prompt."
            )
        limit = self.max_model_len if truncate in (None, -1) else truncate
        dimension = self.dimension + (1 if self.fault == "wrong-dimension" else 0)
        rows = [vector_of(x, dimension) for x in inputs]
        if self.fault == "nan":
            rows[0][0] = np.nan
        if self.fault == "one-missing":
            rows = rows[:-1]
        data = [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()}
            for i, v in enumerate(rows)
        ]
        if self.fault == "garbage":
            data = [{"index": i, "embedding": "not base64!"} for i in range(len(inputs))]
        used = sum(min(c, limit) for c in counts)
        model = "another-model" if self.fault == "wrong-model" else body["model"]
        answer = json.dumps(
            {
                "object": "list",
                "model": model,
                "data": data,
                "usage": {"prompt_tokens": used, "total_tokens": used},
            }
        )
        if self.fault and self.fault.startswith("usage:"):
            answer = answer.replace(f'"prompt_tokens": {used}', f'"prompt_tokens": {self.fault.removeprefix("usage:")}')
        return httpx.Response(200, content=answer, headers={"content-type": "application/json"})


def _refuse(message: str) -> httpx.Response:
    return httpx.Response(400, json={"error": {"message": message, "type": "BadRequestError", "code": 400}})
