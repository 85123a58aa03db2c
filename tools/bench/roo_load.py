"""Roo Code's retry policy against one overloaded gateway: `python tools/bench/roo_load.py`.

It prints figures and PASS/FAIL against the targets; it exits non-zero only when something crashed
(the gateway would not start or died, the throughput run got an error), never on a missed target.

1. One CPU gateway (`embedstack serve` as a subprocess, gateway_bench.BenchGateway) on loopback.
2. Its throughput for Roo-like chunks (~1,000 characters of stdlib source, batches of 60), measured
   with one well-behaved client keeping the queue full: 6 batches in flight, every refusal
   waited out for its Retry-After and sent again.
3. Several emulated Roo Code processes (roo_emulator.RooClient: Roo's own backoff, 3 attempts, up
   to 10 batches in flight each) indexing distinct code at once, offered far more than the gateway's
   queue takes: first on Roo's SDK path (base URL .../v1), then on its full-URL path (.../embeddings).
   The workload is sized from the measured throughput so that each path ideally takes
   --seconds; a run is cut at --cut times its ideal time, the rest counted "unfinished".
4. The throughput again, after the runs; the ideal time uses the higher of the two figures.

Targets, per path: no batch lost (or unfinished), and the total time at most 1.3 x the ideal (all
chunks / the measured throughput): the 429s must not leave the gateway idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

from gateway_bench import LOAD_BATCH, MODEL_NAME, READY_TIMEOUT, BenchGateway
from roo_emulator import (
    BATCH_PROCESSING_CONCURRENCY,
    PATHS,
    figures,
    measure_throughput,
    roo_chunks,
    run_clients,
    split_batches,
)

TARGET_RATIO = 1.3
# All in flight at once: the queue stays full (a fuller queue batches better: 4 in flight give ~25 % less).
THROUGHPUT_BATCHES = 6  # 360 chunks: 9 to 30 s on 2 cores


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tools/bench/roo_load.py", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="emulated Roo processes (default 4)")
    parser.add_argument(
        "--seconds", type=float, default=60, help="ideal seconds of work per path; sizes the batches (default 60)"
    )
    parser.add_argument("--batches", type=int, help="batches per client (default: sized from --seconds)")
    parser.add_argument("--cut", type=float, default=1.6, help="stop a path at this many times its ideal (default 1.6)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument(
        "--scanner-retries", action="store_true", help="add the scanner's 3 tries of a whole batch (scanner.ts:401)"
    )
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="off", help="EMBEDSTACK_COMPILE")
    parser.add_argument("--threads", type=int, help="torch threads of the server (default: all cores)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args(argv)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not args.paths or any(p not in PATHS for p in args.paths):
        parser.error(f"--paths takes {', '.join(PATHS)}")
    if args.clients < 1 or args.seconds <= 0 or args.cut < 1:
        parser.error("--clients must be at least 1, --seconds positive, --cut at least 1")
    args.threads = args.threads or os.cpu_count() or 1
    return args


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def throughput(url: str, chunks: list[str]) -> float:
    """chunks/s of one client with all of `chunks` in flight (batches of 60), refusals waited out."""
    batches = split_batches(chunks)
    return await measure_throughput(url, MODEL_NAME, batches, in_flight=len(batches))


async def run(args: argparse.Namespace, gateway: BenchGateway) -> dict:
    report: dict = {"clients": args.clients, "scanner_retries": args.scanner_retries}
    url = gateway.url
    measured = THROUGHPUT_BATCHES * LOAD_BATCH
    pool = roo_chunks(LOAD_BATCH + 2 * measured)  # a warm-up batch, then fresh text before and after
    print(f"== throughput: one client, {THROUGHPUT_BATCHES} batches of {LOAD_BATCH} in flight ==", flush=True)
    await measure_throughput(url, MODEL_NAME, [pool[:LOAD_BATCH]], in_flight=1)
    before = await throughput(url, pool[LOAD_BATCH : LOAD_BATCH + measured])
    per_client = args.batches or max(2, round(before * args.seconds / LOAD_BATCH / args.clients))
    report["batches_per_client"] = per_client
    print(
        f"  {before:.1f} chunks/s; {args.clients} clients x {per_client} batches of {LOAD_BATCH} per path", flush=True
    )

    runs = {}
    used = len(pool)
    for path in args.paths:
        total = args.clients * per_client * LOAD_BATCH
        chunks = roo_chunks(total, skip=used)  # fresh text: the gateway caches vectors by content
        used += total
        batches = split_batches(chunks)
        workloads = [batches[i * per_client : (i + 1) * per_client] for i in range(args.clients)]
        ideal = total / before
        print(
            f"== {path} path: {args.clients} Roo processes, up to {BATCH_PROCESSING_CONCURRENCY} batches in flight "
            f"each, {total} chunks, ideal {ideal:.0f} s, cut at {args.cut * ideal:.0f} s ==",
            flush=True,
        )
        runs[path] = await run_clients(
            url,
            MODEL_NAME,
            workloads,
            path=path,
            deadline_s=args.cut * ideal,
            scanner_retries=args.scanner_retries,
            dimension=384,
        )
        outcomes, seconds = runs[path]
        print(f"  {figures(outcomes, seconds, before).line()}", flush=True)
        errors = sorted({o.error.split(":", 2)[-1].strip()[:100] for o in outcomes if o.state != "ok" and o.error})
        for error in errors[:3]:
            print(f"  e.g. {error}")
        if gateway.proc is None or gateway.proc.poll() is not None:
            raise RuntimeError(f"the gateway died during the {path} run:\n{gateway.log_tail()}")

    # Measured again after the runs: other load on the machine moves it, and the higher figure
    # (the shorter ideal) keeps such noise from passing a slow run.
    after = await throughput(url, pool[LOAD_BATCH + measured :])
    rate = max(before, after)
    print(f"== throughput again: {after:.1f} chunks/s; the ideal uses {rate:.1f} ==", flush=True)
    report.update(chunks_per_s=rate, chunks_per_s_before=before, chunks_per_s_after=after)
    for path, (outcomes, seconds) in runs.items():
        fig = figures(outcomes, seconds, rate)
        report[path] = {**asdict(fig), "ratio": fig.ratio, "pass_lost": fig.lost + fig.unfinished == 0}
        report[path]["pass_ratio"] = fig.ratio <= TARGET_RATIO
    return report


def print_summary(report: dict, paths: list[str]) -> None:
    print(f"\n== summary: {report['clients']} Roo processes, {report['chunks_per_s']:.1f} chunks/s measured ==")
    print(
        f"{'path':<9} {'lost':>5} {'unfin.':>6} {'429s':>6} {'ratio':>7} {'p50 s':>7} {'p95 s':>7}  lost=0  ratio<=1.3"
    )
    for path in paths:
        f = report[path]
        print(
            f"{path:<9} {f['lost']:>5} {f['unfinished']:>6} {f['rate_limited']:>6} {f['ratio']:>6.2f}x "
            f"{f['p50']:>7.1f} {f['p95']:>7.1f}  {verdict(f['pass_lost']):<6}  {verdict(f['pass_ratio'])}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        with BenchGateway(args.compile, args.threads) as gateway:
            print(f"== gateway (EMBEDSTACK_COMPILE={args.compile}): {gateway.url}, log in {gateway.log_path} ==")
            ready = gateway.wait_ready(READY_TIMEOUT)
            print(f"  ready after {ready:.1f} s; engine: {gateway.engine_line()}", flush=True)
            report = asyncio.run(run(args, gateway))
    except KeyboardInterrupt:
        print("roo_load: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1
    print_summary(report, args.paths)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
