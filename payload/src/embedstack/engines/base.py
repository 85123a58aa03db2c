"""The small protocol every engine implements; the batcher is its only caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from embedstack.config import ModelSpec

Input = str | list[int]


@dataclass(slots=True)
class Item:
    """One unit of queued work.

    cost: tokens it occupies in a batch, padding included (the batch budget counts these).
    inputs: how many request inputs it carries (the queue bound counts these).
    truncated: how many of them were cut to the model's max_tokens (metrics and logs say so).
    """

    payload: Any
    cost: int
    inputs: int = 1
    truncated: int = 0


@dataclass(slots=True)
class Output:
    """What an engine made of one item.

    cacheable: each vector is exactly what this engine makes of its input alone under its cache_fingerprint
    (truncated where the fingerprint's max_tokens says), with its tokens known; only then may it be cached.
    Every engine says so explicitly: a vector cached under the wrong key would be served for good.
    """

    vectors: np.ndarray  # (inputs, dimension) float32, L2-normalised
    tokens: int
    cacheable: bool
    input_tokens: list[int] | None = None  # each input's tokens, when an item of several inputs knows them


class Engine(Protocol):
    spec: ModelSpec
    merges: bool  # may items of different requests share one run()
    concurrency: int  # run() calls in flight at once

    async def start(self) -> None:
        """Load or connect; return once the engine can serve."""

    async def close(self) -> None: ...

    def unavailable_reason(self) -> str | None:
        """Why the engine cannot serve right now (no verified upstream), or None."""

    def cache_fingerprint(self, truncate: bool, input_type: str) -> bytes | None:
        """Everything besides the input that makes this engine's vectors, for the embedding cache;
        None when its answers are not cached (it cannot say how many tokens each input had)."""

    def startup_rate(self) -> float | None:
        """Cost per second a full batch took at start-up (warm-up), so admission has an estimate
        before the first request's batch; None when the engine has not measured one."""

    def batch_cost(self, rows: int, longest: int) -> int:
        """Tokens a batch of `rows` items occupies when its longest item costs `longest`."""

    def estimate_cost(self, inputs: list[Input], input_type: str) -> int:
        """What prepare's items will cost, without the tokenizer: admission decides on it."""

    async def prepare(self, inputs: list[Input], *, truncate: bool, input_type: str) -> list[Item]:
        """Validate and tokenize; raises InvalidInput naming the offending index."""

    async def run(self, items: list[Item]) -> list[Output]:
        """Embed a batch; one Output per item, in order."""


# Characters per token for estimates: code under WordPiece or BPE runs 3 to 4, prose 4 to 5; erring short
# overestimates the cost, so admission errs on the side of the horizon.
CHARS_PER_TOKEN = 3


def estimated_tokens(x: Input, prefix: str, limit: int) -> int:
    return min(limit, len(x) if isinstance(x, list) else (len(prefix) + len(x)) // CHARS_PER_TOKEN + 2)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
