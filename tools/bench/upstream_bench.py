"""Benchmark of the upstream path: the real vLLM direct against gateway -> vLLM, same model, same load.

`python tools/bench/upstream_bench.py` (after `make vllm-venv`). It prints figures; it is a report,
not a test, and exits 0 even when a target is missed.

1. One vLLM (the CPU build, all-MiniLM-L6-v2, max_model_len 256) and one gateway with
   `engine: upstream` in front of it, both on loopback.
2. Throughput under a Roo Code-like load, 10 clients posting batches of 60 code chunks, direct
   to vLLM and through the gateway, in alternating rounds (the best round of each counts, so a
   noisy neighbour hurts both alike). Target: the gateway costs at most 5 % of vLLM's throughput.
3. Single short-query latency at idle over one keep-alive connection, direct and through, again
   alternating. Target: the gateway adds at most 2 ms at p50. On a GPU the batches take
   milliseconds, so this overhead is what users would feel.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from gateway_bench import (
    LOAD_BATCH,
    LOAD_CLIENTS,
    MODEL_NAME,
    READY_TIMEOUT,
    BenchError,
    BenchGateway,
    cosines,
    free_port,
    load_chunks,
    measure_latency,
    measure_throughput,
)
from vllm_cpu import DEFAULT_PYTHON, MAX_MODEL_LEN, VllmServer

TARGETS = {"overhead_pct": 5.0, "added_p50_ms": 2.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tools/bench/upstream_bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=600, help="code chunks per throughput round (default 600)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each path (default 2)")
    parser.add_argument("--latency-requests", type=int, default=200, help="timed single queries per round")
    parser.add_argument("--vllm-python", type=Path, default=DEFAULT_PYTHON, help="python of the vLLM CPU build venv")
    args = parser.parse_args(argv)
    if args.chunks < LOAD_BATCH or args.rounds < 1 or args.latency_requests < 1:
        parser.error(f"--chunks must be at least {LOAD_BATCH}, --rounds and --latency-requests at least 1")
    return args


def models_file(directory: Path, vllm_url: str, weights: str = "") -> Path:
    """A registry serving the bundled model through the vLLM at vllm_url (the bench and tests/vllm);
    with `weights` named, the gateway caches vLLM's answers."""
    path = directory / f"models{'-' + weights.replace('/', '_') if weights else ''}.yaml"
    path.write_text(
        f"models:\n  - id: {MODEL_NAME}\n    engine: upstream\n    dimension: 384\n    max_tokens: {MAX_MODEL_LEN}\n"
        f"    weights: '{weights}'\n    upstreams:\n      - url: {vllm_url}\n"
    )
    return path


def run(args: argparse.Namespace) -> dict[str, float]:
    fig: dict[str, float] = {}
    chunks = load_chunks(args.chunks)
    workdir = Path(tempfile.mkdtemp(prefix="embedstack-bench-upstream-"))
    vllm = VllmServer(free_port(), workdir / "vllm.log", MODEL_NAME, python=args.vllm_python)
    print(f"== vLLM (CPU build) on {vllm.url}, log in {vllm.log_path} ==", flush=True)
    try:
        vllm.start()
        extra = {"EMBEDSTACK_MODELS": str(models_file(workdir, vllm.url))}
        with BenchGateway("off", 1, extra_env=extra) as gateway:
            gateway.wait_ready(READY_TIMEOUT)
            print(f"== gateway (engine upstream) on {gateway.url}, log in {gateway.log_path} ==", flush=True)
            # A client of vLLM itself must ask for truncation, or chunks over 256 tokens get a 400;
            # the gateway adds that field on its own.
            paths = {"vllm": (vllm.url, {"truncate_prompt_tokens": MAX_MODEL_LEN}), "gateway": (gateway.url, None)}
            rates: dict[str, list[float]] = {name: [] for name in paths}
            p50s: dict[str, list[float]] = {name: [] for name in paths}
            vectors: dict[str, np.ndarray] = {}
            measure_throughput(vllm.url, chunks[:LOAD_BATCH], paths["vllm"][1])  # the first batches compile kernels
            for round_ in range(1, args.rounds + 1):
                for name, (url, extra) in paths.items():
                    rate, vectors[name] = measure_throughput(url, chunks, extra)
                    p50, p99 = measure_latency(url, args.latency_requests, extra)
                    rates[name].append(rate)
                    p50s[name].append(p50)
                    print(
                        f"  round {round_}, {name:7}: {rate:6.1f} chunks/s ({LOAD_CLIENTS} clients x {LOAD_BATCH}); "
                        f"single query p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                        flush=True,
                    )
    finally:
        vllm.stop()
    cos = cosines(vectors["gateway"], vectors["vllm"])
    fig.update(
        vllm_chunks_per_s=max(rates["vllm"]),
        gateway_chunks_per_s=max(rates["gateway"]),
        vllm_p50_ms=min(p50s["vllm"]),
        gateway_p50_ms=min(p50s["gateway"]),
        cos_min=float(cos.min()),
    )
    fig["overhead_pct"] = (1 - fig["gateway_chunks_per_s"] / fig["vllm_chunks_per_s"]) * 100
    fig["added_p50_ms"] = fig["gateway_p50_ms"] - fig["vllm_p50_ms"]
    return fig


def print_summary(fig: dict[str, float]) -> None:
    print("\n== summary: gateway -> vLLM against vLLM direct (best round of each) ==")
    print(f"  throughput: vLLM {fig['vllm_chunks_per_s']:.1f}, gateway {fig['gateway_chunks_per_s']:.1f} chunks/s")
    print(f"  single query p50: vLLM {fig['vllm_p50_ms']:.2f} ms, gateway {fig['gateway_p50_ms']:.2f} ms")
    print(f"  vectors through the gateway vs direct: cosine min {fig['cos_min']:.6f}")
    for key, label, unit in (("overhead_pct", "throughput cost", "%"), ("added_p50_ms", "added p50", "ms")):
        verdict = "met" if fig[key] <= TARGETS[key] else "MISSED"
        print(f"  {label}: {fig[key]:+.2f} {unit} (target <= {TARGETS[key]:g} {unit}): {verdict}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        fig = run(args)
    except (BenchError, RuntimeError) as exc:
        print(f"upstream_bench: error: {exc}", file=sys.stderr)
        return 1
    print_summary(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
