"""The gateway's local engine on a GPU against sentence-transformers: `python tools/bench/gpu_bench.py`.

It prints figures and exits 0 even when they disappoint; it exits non-zero only when a figure would be
meaningless: a server error, vectors of the wrong shape, or a gateway that did not run on the device asked for.
tools/bench/device_gpu_bench.sh runs it on a lent GPU machine; `make bench` runs it on whatever is here.

Models (bench_models.py): all-MiniLM-L6-v2 and a BERT the size of bge-base-en-v1.5, built from shipped
configs and tokenizer with random weights from a fixed seed: the same work per chunk as the real models.
Inputs: ~1,000-character chunks of stdlib code (gateway_bench.load_chunks), what Roo Code sends.
On the device chosen (--device: CUDA when torch sees one, else the CPU), in one run:

1. The matrix-product ceiling, measured (bf16 and fp32), so that each rate also reads as a share of it.
2. sentence-transformers in-process: fp32, fp16 and bf16 at its default batch of 32 (chunks/s), each
   one's vectors against fp32's on the same weights (cosine per vector: min and median); then a
   batch-size sweep in the dtype the gateway picks.
3. `embedstack serve` (a real gateway process on loopback, both models loaded) under a Roo-like load:
   4 client processes, each keeping 10 batches of 60 chunks in flight (Roo Code's embeddingBatchSize
   and pLimit(10) per workspace, see roo_emulator.py; 4 as roo_load.py runs), refusals waited out;
   its vectors against sentence-transformers fp32; then again for each EMBEDSTACK_MAX_BATCH_TOKENS of
   the sweep, a gateway started for each.

The last thing printed is one markdown table for the README, with the device named.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import datetime
import functools
import gc
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from bench_models import MODELS, BenchModel, build, flops_per_sequence, shipped_config
from gateway_bench import (
    CHUNK_CHARS,
    READY_TIMEOUT,
    BenchError,
    BenchGateway,
    cosines,
    cut_chunks,
    load_chunks,
    mostly_whitespace,
)

PAYLOAD_SRC = Path(__file__).resolve().parents[2] / "payload" / "src"

# Roo Code's batch and concurrency (roo_emulator.py cites them), and as many Roo processes as roo_load.py runs.
ROO_BATCH = 60
ROO_IN_FLIGHT = 10
ROO_CLIENTS = 4
ST_DEFAULT_BATCH = 32  # sentence-transformers' encode() default

# The seed figure the issue names: "about 8,000 chunks/s claimed for bge-base on one L4". Its source is not
# known (tools/bench/README.md). NVIDIA's L4 datasheet gives 242 TFLOP/s FP16/BF16 with sparsity: 121 dense.
SEED_CLAIM_CHUNKS_PER_S = 8000
L4_DENSE_BF16_TFLOPS = 121.0

# Sizes per device: a GPU run must fit a 15-minute lease, a CPU run a shared 2-core machine.
SIZES = {
    "cuda": {
        "st_chunks": 4096,
        "fp16_chunks": 4096,
        "gateway_chunks": 12_000,
        "st_batches": "16,32,64,128,256,512",
        "gateway_tokens": "8192,32768,131072",
    },
    "cpu": {"st_chunks": 32, "fp16_chunks": 4, "gateway_chunks": 120, "st_batches": "8,32", "gateway_tokens": "8192"},
}
DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


# --- the device -----------------------------------------------------------------------------------


def pick_device(wanted: str) -> str:
    import torch

    if wanted == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda, but torch sees no CUDA device")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def gateway_dtype(device: str) -> str:
    """What the gateway's EMBEDSTACK_DTYPE=auto picks (engines/local.py _pick_dtype), asked the same way."""
    import torch

    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    sys.path.insert(0, str(PAYLOAD_SRC))
    from embedstack.engines.local import cpu_has_native_bf16

    return "bfloat16" if cpu_has_native_bf16() else "float32"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(line.group(1).split()) if line else set()


def describe_device(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "python": sys.version.split()[0]}
    try:
        import sentence_transformers
        import transformers

        info.update(transformers=transformers.__version__, sentence_transformers=sentence_transformers.__version__)
    except ImportError:
        pass
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, cuda=torch.version.cuda, memory_gib=round(props.total_memory / 2**30, 1))
        info["multiprocessors"] = props.multi_processor_count
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout else "?"
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = "?"
        info["label"] = f"{info['name']} (torch {info['torch']}, CUDA {info['cuda']}, driver {info['driver']})"
    else:
        text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        info["name"] = model.group(1).strip() if model else "unknown CPU"
        info["threads"] = torch.get_num_threads()
        info["label"] = f"CPU: {info['name']}, {os.cpu_count()} cores (torch {info['torch']}), no GPU"
    return info


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def matmul_tflops(device: str, dtype_name: str) -> float:
    """TFLOP/s of the fastest of several square products on random data (METHOD.md: measure the ceiling,
    never on zeros); the fastest, because other work on a shared machine only ever slows one down."""
    import torch

    size = 8192 if device == "cuda" else 2048
    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    samples = []
    for _ in range(10 if device == "cuda" else 5):
        started = time.perf_counter()
        a @ b
        sync(device)
        samples.append(time.perf_counter() - started)
    return 2 * size**3 / min(samples) / 1e12


# --- sentence-transformers in-process -------------------------------------------------------------


def st_load(path: Path, device: str, dtype_name: str):
    import torch
    from sentence_transformers import SentenceTransformer

    kwargs = None if dtype_name == "float32" else {"dtype": getattr(torch, dtype_name)}
    return SentenceTransformer(str(path), device=device, model_kwargs=kwargs)


def st_rate(model, chunks: list[str], batch: int) -> tuple[float, np.ndarray]:
    """chunks/s of encode() after a warm-up batch of the same size (kernels, allocator, cuBLAS handles)."""
    model.encode(chunks[:batch], batch_size=batch, show_progress_bar=False)
    started = time.perf_counter()
    vectors = model.encode(chunks, batch_size=batch, show_progress_bar=False)
    return len(chunks) / (time.perf_counter() - started), np.asarray(vectors, dtype=np.float32)


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def agreement(vectors: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    cos = cosines(vectors, reference)
    if not np.isfinite(cos).all():
        return float("nan"), float("nan")
    return float(cos.min()), float(np.median(cos))


# --- the Roo-like load, from several processes ----------------------------------------------------


def _decode(body: dict, expected: int, dimension: int) -> np.ndarray:
    data = sorted(body["data"], key=lambda d: d["index"])
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
    if len(rows) != expected or any(row.shape != (dimension,) for row in rows):
        shapes = sorted({row.shape for row in rows})
        raise BenchError(f"expected {expected} vectors of {dimension} floats, got {len(rows)} of shapes {shapes}")
    return np.stack(rows)


async def _roo_client(url: str, model: str, dimension: int, batches: list[list[str]], start_at: float) -> dict:
    """One Roo-like process: up to ROO_IN_FLIGHT batches in flight, base64 as Roo asks, a refusal (429/503)
    waited out for its Retry-After and sent again (a well-behaved client: this measures throughput)."""
    import httpx

    queue = collections.deque(batches)
    refused = 0
    chunks = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal refused, chunks
        while queue:
            batch = queue.popleft()
            while True:
                body = {"model": model, "input": batch, "encoding_format": "base64"}
                response = await client.post("/v1/embeddings", json=body)
                if response.status_code == 200:
                    _decode(response.json(), len(batch), dimension)
                    chunks += len(batch)
                    break
                if response.status_code in (429, 503):
                    refused += 1
                    await asyncio.sleep(max(0.1, float(response.headers.get("retry-after", "1") or 1)))
                    continue
                raise BenchError(f"POST /v1/embeddings answered {response.status_code}: {response.text[:300]}")

    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    started = time.monotonic()
    limits = httpx.Limits(max_connections=ROO_IN_FLIGHT, max_keepalive_connections=ROO_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(ROO_IN_FLIGHT)))
    return {"chunks": chunks, "started": started, "ended": time.monotonic(), "refused": refused}


def roo_client_process(url: str, model: str, dimension: int, batches: list[list[str]], start_at: float) -> dict:
    return asyncio.run(_roo_client(url, model, dimension, batches, start_at))


def roo_load(pool: ProcessPoolExecutor, url: str, model: BenchModel, chunks: list[str]) -> dict:
    """chunks/s of the gateway under ROO_CLIENTS processes at once (CLOCK_MONOTONIC is system-wide on Linux,
    so one start time serves them all), from that start until the last batch came back."""
    batches = [chunks[i : i + ROO_BATCH] for i in range(0, len(chunks), ROO_BATCH)]
    shares = [batches[i::ROO_CLIENTS] for i in range(ROO_CLIENTS)]
    start_at = time.monotonic() + 2.0  # every process started and waiting before the first request
    futures = [
        pool.submit(roo_client_process, url, model.served_id, model.dimension, share, start_at)
        for share in shares
        if share
    ]
    results = [f.result() for f in futures]
    seconds = max(r["ended"] for r in results) - start_at
    done = sum(r["chunks"] for r in results)
    return {"chunks": done, "seconds": seconds, "rate": done / seconds, "refused": sum(r["refused"] for r in results)}


def served_vectors(url: str, model: BenchModel, chunks: list[str]) -> np.ndarray:
    import httpx

    rows = []
    with httpx.Client(base_url=url, timeout=600) as client:
        for i in range(0, len(chunks), ROO_BATCH):
            batch = chunks[i : i + ROO_BATCH]
            body = {"model": model.served_id, "input": batch, "encoding_format": "base64"}
            response = client.post("/v1/embeddings", json=body)
            if response.status_code != 200:
                raise BenchError(f"POST /v1/embeddings answered {response.status_code}: {response.text[:300]}")
            rows.append(_decode(response.json(), len(batch), model.dimension))
    return np.concatenate(rows)


def write_models_file(folder: Path, built: dict[str, Path]) -> Path:
    lines = ["models:"]
    for model in MODELS:
        if model.name in built:
            lines += [
                f"  - id: {model.served_id}",
                f"    source: {built[model.name]}",
                f"    dimension: {model.dimension}",
                f"    max_tokens: {model.max_tokens}",
                f"    pooling: {model.pooling}",
            ]
    path = folder / "models.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def engine_lines(gateway: BenchGateway) -> dict[str, tuple[str, str]]:
    """Device and dtype each model says it loaded on (engines/local.py logs one line per model)."""
    text = gateway.log_path.read_text(errors="replace")
    found = re.findall(r"model (\S+) loaded from \S+ on (\w+) \((\w+), compiled=\w+, \d+ threads\)", text)
    return {name: (device, dtype) for name, device, dtype in found}


# --- the run --------------------------------------------------------------------------------------


class Report:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.fig: dict[str, Any] = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.began = time.monotonic()

    def row(self, **row: Any) -> None:
        self.rows.append(row)
        self.fig.setdefault("rows", []).append(row)

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.began) if self.args.budget else float("inf")


def code_chunks(count: int) -> list[str]:
    """Roo-like chunks of the stdlib's code; where an image ships a stripped stdlib, of torch's and
    transformers' Python sources, cut the same way."""
    try:
        return load_chunks(count)
    except BenchError:
        import torch
        import transformers

        chunks: list[str] = []
        for package in (transformers, torch):
            for path in sorted(Path(package.__file__).parent.rglob("*.py")):
                text = path.read_text(encoding="utf-8", errors="replace")
                chunks.extend(c for c in cut_chunks(text, CHUNK_CHARS) if not mostly_whitespace(c))
                if len(chunks) >= count:
                    return chunks[:count]
        raise


def tokens_of(path: Path, chunks: list[str], limit: int) -> np.ndarray:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return np.minimum([len(e.ids) for e in tokenizer.encode_batch(chunks)], limit)


def run_st(report: Report, model: BenchModel, path: Path, chunks: list[str], sizes: dict, gw_dtype: str) -> np.ndarray:
    """The sentence-transformers rows of one model; returns the fp32 reference vectors of `chunks`."""
    device = report.fig["device"]["device"]
    m = st_load(path, device, "float32")
    fp32_rate, reference = st_rate(m, chunks, ST_DEFAULT_BATCH)
    rate = fp32_rate
    del m
    free(device)
    report.row(
        model=model.name,
        runner="sentence-transformers",
        dtype="fp32",
        batch=ST_DEFAULT_BATCH,
        rate=rate,
        cos=(1.0, 1.0),
        chunks=len(chunks),
    )
    print(f"  ST fp32 batch {ST_DEFAULT_BATCH}: {rate:,.1f} chunks/s", flush=True)
    for dtype_name in ("float16", "bfloat16"):
        subset = chunks[: sizes["fp16_chunks"]] if dtype_name == "float16" else chunks
        try:
            m = st_load(path, device, dtype_name)
            rate, vectors = st_rate(m, subset, ST_DEFAULT_BATCH)
        except (RuntimeError, NotImplementedError) as exc:  # a dtype a CPU build has no kernels for
            report.notes.append(f"{model.name}: sentence-transformers {dtype_name} failed on {device}: {exc}")
            print(f"  ST {dtype_name}: FAILED: {str(exc).splitlines()[0]}", flush=True)
            continue
        finally:
            m = None
            free(device)
        cos = agreement(vectors, reference[: len(subset)])
        report.row(
            model=model.name,
            runner="sentence-transformers",
            dtype=DTYPE_NAMES[dtype_name],
            batch=ST_DEFAULT_BATCH,
            rate=rate,
            cos=cos,
            chunks=len(subset),
        )
        print(
            f"  ST {DTYPE_NAMES[dtype_name]} batch {ST_DEFAULT_BATCH}: {rate:,.1f} chunks/s on {len(subset)} chunks;"
            f" cosine to fp32 min {cos[0]:.5f}, median {cos[1]:.5f}",
            flush=True,
        )
        if dtype_name == "float16" and device == "cpu":
            units = ", ".join(sorted(cpu_flags() & {"avx512_fp16", "amx_fp16"})) or "no avx512_fp16 or amx_fp16"
            report.notes.append(
                f"{model.name}: fp16 on this CPU ({units}) ran at {rate / fp32_rate:.2f}x fp32's speed; "
                f"measured on {len(subset)} chunks only"
            )
    m = st_load(path, device, gw_dtype)
    for batch in [int(b) for b in sizes["st_batches"].split(",")]:
        if batch == ST_DEFAULT_BATCH and gw_dtype != "float32":
            continue  # measured above
        rate, _ = st_rate(m, chunks, batch)
        report.row(
            model=model.name,
            runner="sentence-transformers",
            dtype=DTYPE_NAMES[gw_dtype],
            batch=batch,
            rate=rate,
            cos=None,
            chunks=len(chunks),
        )
        print(f"  ST {DTYPE_NAMES[gw_dtype]} batch {batch}: {rate:,.1f} chunks/s", flush=True)
    del m
    free(device)
    return reference


def run_gateways(report: Report, built: dict[str, Path], references: dict, chunk_sets: dict, sizes: dict) -> None:
    device = report.fig["device"]["device"]
    models = [m for m in MODELS if m.name in built]
    token_values = [int(t) for t in sizes["gateway_tokens"].split(",")]
    models_file = write_models_file(next(iter(built.values())).parent, built)
    context = multiprocessing.get_context("spawn")  # no forked copy of this process's CUDA state
    step_seconds = 0.0
    # Clients ignore Ctrl-C and the time limit's SIGINT: this process stops the gateway, which ends their load.
    ignore_sigint = functools.partial(signal.signal, signal.SIGINT, signal.SIG_IGN)
    with ProcessPoolExecutor(ROO_CLIENTS, mp_context=context, initializer=ignore_sigint) as pool:
        list(pool.map(time.sleep, [1.0] * ROO_CLIENTS))  # every client process spawned before any timing
        for n, max_tokens in enumerate(token_values):
            if n and report.left() < step_seconds * 1.3:
                report.notes.append(f"gateway with EMBEDSTACK_MAX_BATCH_TOKENS={max_tokens}: skipped, out of time")
                continue
            began = time.monotonic()
            env = {
                "EMBEDSTACK_MODELS": str(models_file),
                "EMBEDSTACK_DEVICE": device,
                "EMBEDSTACK_MAX_BATCH_TOKENS": str(max_tokens),
                # A queue that holds the whole Roo-like offer: 40 batches of 60 in flight.
                "EMBEDSTACK_MAX_QUEUE_INPUTS": str(max(8192, ROO_CLIENTS * ROO_IN_FLIGHT * ROO_BATCH)),
            }
            with BenchGateway(report.args.compile, os.cpu_count() or 1, env) as gateway:
                print(
                    f"== gateway, EMBEDSTACK_MAX_BATCH_TOKENS={max_tokens}: {gateway.url}, log {gateway.log_path} ==",
                    flush=True,
                )
                ready = gateway.wait_ready(READY_TIMEOUT)
                loaded = engine_lines(gateway)
                print(f"  ready after {ready:.1f} s; engines: {loaded}", flush=True)
                for model in models:
                    got = loaded.get(model.served_id, ("?", "?"))
                    if got[0] != device:
                        raise BenchError(f"{model.served_id} loaded on {got[0]}, not {device}:\n{gateway.log_tail()}")
                    chunks = chunk_sets[model.name]
                    cos = None
                    if n == 0:
                        cos = agreement(served_vectors(gateway.url, model, chunks["st"]), references[model.name])
                    load = roo_load(pool, gateway.url, model, chunks["gateway"])
                    report.row(
                        model=model.name,
                        runner="gateway",
                        dtype=DTYPE_NAMES[got[1]],
                        batch=max_tokens,
                        rate=load["rate"],
                        cos=cos,
                        chunks=load["chunks"],
                        refused=load["refused"],
                        ready_s=ready,
                    )
                    text = f"  {model.served_id}: {load['rate']:,.1f} chunks/s ({load['chunks']:,} chunks in "
                    text += f"{load['seconds']:.1f} s, {load['refused']} refusals)"
                    if cos:
                        text += f"; cosine to ST fp32 min {cos[0]:.5f}, median {cos[1]:.5f}"
                    print(text, flush=True)
                if gateway.proc is None or gateway.proc.poll() is not None:
                    raise BenchError(f"the gateway died:\n{gateway.log_tail()}")
                if report.args.keep_logs:
                    (report.args.keep_logs / f"gateway-{max_tokens}.log").write_bytes(gateway.log_path.read_bytes())
            step_seconds = time.monotonic() - began


def run(report: Report) -> None:
    import torch

    args = report.args
    device = pick_device(args.device)
    sizes = {**SIZES[device], **{k: v for k, v in vars(args).items() if k in SIZES[device] and v is not None}}
    report.fig.update(device=describe_device(device), sizes=sizes)
    gw_dtype = gateway_dtype(device)
    report.fig["gateway_dtype"] = gw_dtype
    print(f"== {report.fig['device']['label']}; the gateway will pick {gw_dtype} ==", flush=True)
    torch.manual_seed(0)
    # fp16 products on a CPU without fp16 units are slow emulation, not a ceiling worth the time.
    dtypes = ("bfloat16", "float16", "float32") if device == "cuda" else ("bfloat16", "float32")
    ceiling = {name: matmul_tflops(device, name) for name in dtypes}
    report.fig["matmul_tflops"] = ceiling
    print("  matrix-product ceiling: " + ", ".join(f"{DTYPE_NAMES[k]} {v:,.3g} TFLOP/s" for k, v in ceiling.items()))
    free(device)

    texts = code_chunks(max(sizes["st_chunks"], sizes["gateway_chunks"]))
    with tempfile.TemporaryDirectory(prefix="gpu-bench-models-") as work:  # 0.5 GB of weights, gone after
        measure(report, [m for m in MODELS if m.name in args.models], texts, Path(work), sizes, gw_dtype)


def measure(report: Report, wanted: list[BenchModel], texts: list[str], work: Path, sizes: dict, gw_dtype: str) -> None:
    built: dict[str, Path] = {}
    references: dict[str, np.ndarray] = {}
    chunk_sets: dict[str, dict[str, list[str]]] = {}
    for model in wanted:
        print(f"== {model.name} architecture, random weights ==", flush=True)
        built[model.name] = build(model, work / model.name)
        st_chunks = texts[: sizes["st_chunks"]]
        chunk_sets[model.name] = {"st": st_chunks, "gateway": texts[: sizes["gateway_chunks"]]}
        tokens = tokens_of(built[model.name], chunk_sets[model.name]["gateway"], model.max_tokens)
        config = shipped_config(model)
        flops = float(np.mean([flops_per_sequence(config, int(t)) for t in tokens]))
        report.fig.setdefault("models", {})[model.name] = {
            "parameters": model.parameters,
            "mean_tokens": float(tokens.mean()),
            "truncated_share": float((tokens >= model.max_tokens).mean()),
            "gflop_per_chunk": flops / 1e9,
        }
        print(
            f"  {model.parameters:,} parameters; {tokens.mean():.0f} tokens per chunk on average (cut at "
            f"{model.max_tokens}); {flops / 1e9:.1f} GFLOP per chunk",
            flush=True,
        )
        references[model.name] = run_st(report, model, built[model.name], st_chunks, sizes, gw_dtype)
    if not report.args.skip_gateway:
        run_gateways(report, built, references, chunk_sets, sizes)


# --- the table ------------------------------------------------------------------------------------


def table(report: Report) -> str:
    fig = report.fig
    info = fig.get("device", {})
    ceiling = fig.get("matmul_tflops", {})
    models = fig.get("models", {})
    gw_dtype = DTYPE_NAMES.get(fig.get("gateway_dtype", ""), "?")
    lines = [
        f"tools/bench/gpu_bench.py, {fig['started'][:10]}, {info.get('label', '?')}; "
        "matrix-product ceiling measured "
        + ", ".join(f"{DTYPE_NAMES[k]} {v:,.3g}" for k, v in ceiling.items())
        + " TFLOP/s. Real architectures, random weights; stdlib code chunks of "
        "~1,000 characters ("
        + ", ".join(f"{n}: {m['mean_tokens']:.0f} tokens, {m['gflop_per_chunk']:.1f} GFLOP" for n, m in models.items())
        + f" per chunk). The gateway runs {gw_dtype}; its load is {ROO_CLIENTS} Roo-like clients x "
        f"{ROO_IN_FLIGHT} batches of {ROO_BATCH} in flight.",
        "",
        f"| model | runner | dtype | batch | chunks/s | x ST {gw_dtype}, batch 32 | % of matmul ceiling "
        "| cosine to fp32, min / median |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = {
        r["model"]: r["rate"]
        for r in report.rows
        if r["runner"] != "gateway" and r["batch"] == ST_DEFAULT_BATCH and r["dtype"] == gw_dtype
    }
    for r in report.rows:
        batch = f"{r['batch']:,} tokens" if r["runner"] == "gateway" else str(r["batch"])
        ratio = f"{r['rate'] / base[r['model']]:.2f}x" if base.get(r["model"]) else ""
        share = ""
        peak = ceiling.get({v: k for k, v in DTYPE_NAMES.items()}[r["dtype"]])
        if peak and r["model"] in models:
            share = f"{r['rate'] * models[r['model']]['gflop_per_chunk'] / 1e3 / peak:.1%}"
        cos = f"{r['cos'][0]:.5f} / {r['cos'][1]:.5f}" if r.get("cos") else ""
        runner = "gateway, Roo-like load" if r["runner"] == "gateway" else r["runner"]
        if r.get("refused"):
            runner += f" ({r['refused']} refusals)"
        lines.append(
            f"| {r['model']} | {runner} | {r['dtype']} | {batch} | {r['rate']:,.1f} | {ratio} | {share} | {cos} |"
        )
    for name in ("all-minilm-l6-v2", "bge-base-en-v1.5"):
        served = [r for r in report.rows if r["model"] == name and r["runner"] == "gateway"]
        st = [r for r in report.rows if r["model"] == name and r["runner"] != "gateway" and r["dtype"] == gw_dtype]
        if served and st:
            default = served[0]
            best = max(st, key=lambda r: r["rate"])
            lines.append("")
            text = (
                f"{name}: the gateway at its defaults serves {default['rate']:,.1f} chunks/s = "
                f"{default['rate'] / best['rate']:.2f}x sentence-transformers' best ({best['rate']:,.1f} at batch "
                f"{best['batch']})."
            )
            top = max(served, key=lambda r: r["rate"])
            if top is not default:
                text += f" Its best: {top['rate']:,.1f} at EMBEDSTACK_MAX_BATCH_TOKENS={top['batch']}."
            lines.append(text)
    if "bge-base-en-v1.5" in models:
        gflop = models["bge-base-en-v1.5"]["gflop_per_chunk"]
        lines.append("")
        lines.append(
            f"Seed figure: ~{SEED_CLAIM_CHUNKS_PER_S:,} chunks/s claimed for bge-base on one L4 (source unknown). "
            f"At {gflop:.1f} GFLOP per chunk that needs {SEED_CLAIM_CHUNKS_PER_S * gflop / 1e3:,.0f} TFLOP/s; "
            f"an L4's dense bf16 peak ({L4_DENSE_BF16_TFLOPS:.0f}, NVIDIA's datasheet) caps these chunks at "
            f"{L4_DENSE_BF16_TFLOPS * 1e3 / gflop:,.0f} chunks/s, so the claim must be for shorter inputs."
        )
    for note in report.notes:
        lines.append(f"- {note}")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tools/bench/gpu_bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--models", default=",".join(m.name for m in MODELS), help="comma-separated")
    parser.add_argument("--st-chunks", type=int, help="chunks per sentence-transformers run (cuda 4096, cpu 32)")
    parser.add_argument("--fp16-chunks", type=int, help="chunks of the fp16 run (cuda 4096, cpu 4: slow there)")
    parser.add_argument("--gateway-chunks", type=int, help="chunks per gateway load (cuda 12000, cpu 120)")
    parser.add_argument("--st-batches", help="batch sizes of the sentence-transformers sweep, comma-separated")
    parser.add_argument("--gateway-tokens", help="EMBEDSTACK_MAX_BATCH_TOKENS values of the gateway sweep")
    parser.add_argument("--skip-gateway", action="store_true", help="sentence-transformers only")
    parser.add_argument(
        "--compile", choices=("auto", "on", "off"), default="off", help="EMBEDSTACK_COMPILE (compiles on a CPU only)"
    )
    parser.add_argument("--budget", type=float, default=0, help="seconds; later gateway sweep steps are skipped")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE")
    parser.add_argument("--table", type=Path, metavar="FILE", help="also write the table to FILE")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy each gateway's log into DIR")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - {m.name for m in MODELS})
    if unknown or not args.models:
        parser.error(f"--models takes {', '.join(m.name for m in MODELS)}; got {unknown or 'none'}")
    for name in ("st_chunks", "fp16_chunks", "gateway_chunks"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the models are local folders: never reach for the Hub
    report = Report(args)
    status = 0
    try:
        run(report)
    except BenchError as exc:
        print(f"gpu_bench: error: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:  # device_gpu_bench.sh's timeout: print what was measured
        report.notes.append("cut short by the time limit: the rows above are all that was measured")
        status = 130
    text = table(report)
    print("\n" + text)
    if args.table:
        args.table.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps({**report.fig, "notes": report.notes}, indent=2, default=str) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
