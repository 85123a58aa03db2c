"""A fake engine for the fast tests: the Engine protocol (engines/base.py) without a model.

It keeps LocalEngine's contract where the layers above can see it: the same InvalidInput
messages and codes, truncation at spec.max_tokens, the document/query prefixes, one token per
whitespace-separated word, and deterministic L2-normalised vectors, so a test can compute the
vector it expects. Tests steer it: hold runs on an event, fail the next batch, refuse to load.
"""

from __future__ import annotations

import asyncio
import zlib

import numpy as np
from embedstack.config import ModelSpec, Settings
from embedstack.engines import Input, Item, Output
from embedstack.engines.base import l2_normalise
from embedstack.errors import InvalidInput

VOCAB_SIZE = 30522


def token_ids(text: str) -> list[int]:
    return [zlib.crc32(word.encode()) % VOCAB_SIZE for word in text.split()]


def vector_of(ids: list[int], dimension: int) -> np.ndarray:
    """The vector the fake engine returns for these token ids, shape (1, dimension)."""
    seed = zlib.crc32(np.asarray(ids, dtype=np.int64).tobytes())
    raw = np.random.default_rng(seed).standard_normal((1, dimension)).astype(np.float32)
    return l2_normalise(raw)


class FakeEngine:
    merges = True
    concurrency = 1

    def __init__(self, spec: ModelSpec, settings: Settings):
        self.spec = spec
        self.settings = settings
        self.loaded = asyncio.Event()  # start() waits for it when load_on_start is False
        self.load_on_start = True
        self.hold: asyncio.Event | None = None  # run() waits for it when set
        self.fail_next: Exception | None = None
        self.unavailable: str | None = None
        self.batches: list[list[Item]] = []
        self.prepared: list[int] = []  # inputs of each prepare() call: what went through the "tokenizer"
        self.closed = False
        self.warm_rate: float | None = None  # what startup_rate() reports

    async def start(self) -> None:
        if self.load_on_start:
            self.loaded.set()
        await self.loaded.wait()

    async def close(self) -> None:
        self.closed = True

    def unavailable_reason(self) -> str | None:
        return self.unavailable

    def cache_fingerprint(self, truncate: bool, input_type: str) -> bytes | None:
        prefix = self.spec.query_prefix if input_type == "query" else self.spec.document_prefix
        return repr(("fake", self.spec.id, self.spec.dimension, self.spec.max_tokens, prefix, truncate)).encode()

    def startup_rate(self) -> float | None:
        return self.warm_rate

    def batch_cost(self, rows: int, longest: int) -> int:
        return rows * longest

    def estimate_cost(self, inputs: list[Input], input_type: str) -> int:
        prefix = self.spec.query_prefix if input_type == "query" else self.spec.document_prefix
        limit = self.spec.max_tokens
        return sum(max(1, min(limit, len(token_ids(prefix + x)) if isinstance(x, str) else len(x))) for x in inputs)

    async def prepare(self, inputs: list[Input], *, truncate: bool, input_type: str) -> list[Item]:
        self.prepared.append(len(inputs))
        prefix = self.spec.query_prefix if input_type == "query" else self.spec.document_prefix
        limit = self.spec.max_tokens
        items = []
        for i, x in enumerate(inputs):
            if isinstance(x, str):
                ids = token_ids(prefix + x)
            else:
                bad = next((t for t in x if not 0 <= t < VOCAB_SIZE), None)
                if bad is not None:
                    raise InvalidInput(
                        f"input[{i}] contains token id {bad}, outside the vocabulary [0, {VOCAB_SIZE})",
                        param="input",
                        code="invalid_token_id",
                    )
                ids = list(x)
            if len(ids) > limit and not truncate:
                raise InvalidInput(
                    f"input[{i}] has {len(ids)} tokens, more than the model's maximum of {limit}, "
                    "and truncation is switched off",
                    param="input",
                    code="context_length_exceeded",
                )
            items.append(Item(payload=ids[:limit], cost=max(1, len(ids[:limit])), truncated=int(len(ids) > limit)))
        return items

    async def run(self, items: list[Item]) -> list[Output]:
        self.batches.append(items)
        if self.hold is not None:
            await self.hold.wait()
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure
        return [
            Output(vectors=vector_of(item.payload, self.spec.dimension), tokens=len(item.payload), cacheable=True)
            for item in items
        ]


class FakeEngines:
    """An engine_factory for create_app that keeps every engine it made, by model id."""

    def __init__(self, load_on_start: bool = True):
        self.load_on_start = load_on_start
        self.made: dict[str, FakeEngine] = {}

    def __call__(self, spec: ModelSpec, settings: Settings) -> FakeEngine:
        engine = FakeEngine(spec, settings)
        engine.load_on_start = self.load_on_start
        self.made[spec.id] = engine
        return engine
