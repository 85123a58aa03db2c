"""Roo-Code-like embedding traffic against one gateway, with every request classified.

Like Roo Code's code indexer (FACTS.md): batches of 60 code chunks, up to 10 batches in flight,
`encoding_format: base64`, the key in both `Authorization: Bearer` and `api-key`, one keep-alive
HTTP client per worker (the OpenAI SDK's httpx client, without its retries).

Every request ends in exactly one of:
  ok        200 with 60 embeddings of the model's dimension;
  refused   429 or 503 with a Retry-After header (retryable: the client waits and sends again);
  not-sent  a connect error (refused, no route, connect timeout) after the preemption notice:
            the request never reached a gateway, so nothing was lost;
  failure   anything else: a reset, a response cut off after the request was sent, a timeout,
            another status, a malformed 200, or a connect error before the notice.
"""

from __future__ import annotations

import base64
import random
import ssl
import sysconfig
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BATCH = 60
CLIENTS = 10
CHUNK_CHARS = 560  # ~100-200 tokens of Python with the MiniLM tokenizer


def code_chunks(count: int, seed: int = 7) -> list[str]:
    """Windows of real Python source (the stdlib), cut at line ends like Roo's chunker."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[str] = []
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        start = 0
        while len(text) - start >= CHUNK_CHARS // 2:
            end = text.rfind("\n", start, start + CHUNK_CHARS) + 1
            if end <= start + CHUNK_CHARS // 2:
                end = start + CHUNK_CHARS
            chunk = text[start:end]
            start = end
            if sum(not c.isspace() for c in chunk) >= len(chunk) / 3:
                chunks.append(chunk)
        if len(chunks) >= count * 3:
            break
    random.Random(seed).shuffle(chunks)
    return chunks[:count]


@dataclass
class Outcome:
    client: int
    seq: int
    kind: str  # ok | refused | not-sent | failure
    detail: str
    sent: float  # time.monotonic() when the request started
    done: float


@dataclass
class Traffic:
    """CLIENTS workers sending batches until each meets a gone gateway or stop() is called."""

    url: str
    api_key: str
    model: str
    dimension: int
    clients: int = CLIENTS
    # Roo Code's shorter wait: its full-URL path's fetch gives up on an answer after 300 s (the SDK path after
    # 10 min; FACTS.md), above the 120 s the gateway may hold a request in line (embedding_service_max_hold_seconds).
    read_timeout: float = 300.0
    verify: ssl.SSLContext | bool = True  # the stack's CA, as a client that trusts it
    outcomes: list[Outcome] = field(default_factory=list)
    notice_at: float | None = None  # monotonic time of the preemption notice

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        pool = code_chunks(BATCH * 8)
        self._batches = [pool[i * BATCH : (i + 1) * BATCH] for i in range(len(pool) // BATCH)]

    def start(self) -> Traffic:
        for index in range(self.clients):
            thread = threading.Thread(target=self._worker, args=(index,), name=f"roo-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 90) -> None:
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(o.kind == kind for o in self.outcomes)

    def counts(self) -> Counter:
        with self._lock:
            return Counter(o.kind for o in self.outcomes)

    def per_client(self) -> dict[int, list[Outcome]]:
        with self._lock:
            result: dict[int, list[Outcome]] = {i: [] for i in range(self.clients)}
            for o in self.outcomes:
                result[o.client].append(o)
        return result

    # -- one worker ------------------------------------------------------------------------------

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _worker(self, index: int) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}", "api-key": self.api_key}
        timeout = httpx.Timeout(connect=5.0, read=self.read_timeout, write=30.0, pool=5.0)
        seq = 0
        with httpx.Client(headers=headers, timeout=timeout, verify=self.verify) as client:
            while not self._stop.is_set():
                batch = self._batches[(index + seq) % len(self._batches)]
                body = {"input": batch, "model": self.model, "encoding_format": "base64"}
                sent = time.monotonic()
                try:
                    response = client.post(self.url + "/v1/embeddings", json=body)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    done = time.monotonic()
                    notice = self.notice_at
                    kind = "not-sent" if notice is not None and sent >= notice else "failure"
                    self._record(Outcome(index, seq, kind, f"{type(exc).__name__}: {exc}", sent, done))
                    return  # the gateway is gone (or never was): this worker is done
                except httpx.HTTPError as exc:
                    # Reset, EOF before the response, a cut-off body, a read timeout: lost.
                    self._record(Outcome(index, seq, "failure", f"{type(exc).__name__}: {exc}", sent, time.monotonic()))
                    seq += 1
                    time.sleep(0.2)
                    continue
                done = time.monotonic()
                kind, detail = self._classify(response, len(batch))
                self._record(Outcome(index, seq, kind, detail, sent, done))
                seq += 1
                if kind == "refused":
                    # Roo backs off on 429; any client should honour Retry-After (capped here).
                    try:
                        wait = float(response.headers["Retry-After"])
                    except ValueError:
                        wait = 1.0
                    self._stop.wait(min(max(wait, 0.1), 1.0))

    def _classify(self, response: httpx.Response, expected: int) -> tuple[str, str]:
        status = response.status_code
        if status == 200:
            try:
                data = response.json()["data"]
                if len(data) != expected:
                    return "failure", f"200 with {len(data)} embeddings for {expected} inputs"
                for item in data:
                    raw = item["embedding"]
                    size = len(base64.b64decode(raw)) // 4 if isinstance(raw, str) else len(raw)
                    if size != self.dimension:
                        return "failure", f"200 with a {size}-dim embedding, not {self.dimension}"
            except (ValueError, KeyError, TypeError) as exc:
                return "failure", f"200 with an unreadable body: {exc}"
            return "ok", "200"
        if status in (429, 503):
            if "Retry-After" in response.headers:
                return "refused", f"{status} Retry-After {response.headers['Retry-After']}: {response.text[:120]}"
            return "failure", f"{status} without Retry-After: {response.text[:200]}"
        return "failure", f"HTTP {status}: {response.text[:200]}"


@dataclass
class ReadyWatch:
    """Polls GET /ready on fresh connections; records when it first stops being 200 and when
    the port first refuses connections (the gateway process is gone)."""

    url: str
    verify: ssl.SSLContext | bool = True
    interval: float = 0.1
    not_ready_at: float | None = None
    closed_at: float | None = None
    states: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ready-watch", daemon=True)

    def start(self) -> ReadyWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                timeout = httpx.Timeout(2.0, connect=1.0)
                state = str(httpx.get(self.url + "/ready", timeout=timeout, verify=self.verify).status_code)
            except httpx.HTTPError as exc:
                state = type(exc).__name__
            if state != last:
                self.states.append((now, state))
                last = state
            if state != "200" and self.not_ready_at is None:
                self.not_ready_at = now
            if state in ("ConnectError", "ConnectTimeout") and self.closed_at is None:
                self.closed_at = now
                return
            self._stop.wait(self.interval)
