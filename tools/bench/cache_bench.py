"""The embedding cache: `python tools/bench/cache_bench.py`.

1. Re-indexing: 2,000 Roo Code-like chunks (about 1,000 characters of stdlib source) sent twice,
   as 10 clients posting batches of 60. Prints both passes' chunks/s, the speed-up (target >= 20x)
   and whether the second pass's vectors are bit-identical to the first's.
2. The bound: a gateway whose cache holds a tenth of a workload embeds all of it; prints the bytes the
   cache holds (target: within EMBEDSTACK_CACHE_BYTES) and the evictions.

A report, not a test: it exits 0 even when a target is missed.
"""

from __future__ import annotations

import argparse
import re
import sys

import httpx
import numpy as np
from gateway_bench import BenchGateway, load_chunks, measure_throughput

# An entry is its 384 float32s plus embedding_cache.ENTRY_OVERHEAD bytes.
ENTRY_BYTES = 384 * 4 + 400
SPEEDUP_TARGET = 20.0


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def reindex(chunks: list[str]) -> dict[str, float | bool]:
    with BenchGateway("auto", 0, {"EMBEDSTACK_CACHE_BYTES": str(256 * 1024 * 1024)}) as gateway:
        gateway.wait_ready(300)
        measure_throughput(gateway.url, load_chunks(120)[-60:])  # warm-up on other text
        first_rate, first = measure_throughput(gateway.url, chunks)
        second_rate, second = measure_throughput(gateway.url, chunks)
        hits = metric(gateway.url, 'embedstack_cache_hits_total{tier="memory"}')
    return {
        "first": first_rate,
        "second": second_rate,
        "speedup": second_rate / first_rate,
        "identical": bool(np.array_equal(first, second)),
        "hits": hits,
    }


def bound(chunks: list[str]) -> dict[str, float]:
    limit = len(chunks) // 10 * ENTRY_BYTES
    with BenchGateway("auto", 0, {"EMBEDSTACK_CACHE_BYTES": str(limit)}) as gateway:
        gateway.wait_ready(300)
        measure_throughput(gateway.url, chunks)
        held = metric(gateway.url, 'embedstack_cache_bytes{tier="memory"}')
        evictions = metric(gateway.url, 'embedstack_cache_evictions_total{tier="memory"}')
    return {"limit": limit, "held": held, "evictions": evictions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000)
    args = parser.parse_args(argv)
    chunks = load_chunks(args.chunks + 120)[120:]
    print(f"Re-indexing {len(chunks):,} chunks twice (10 clients x 60 per batch) ...", flush=True)
    r = reindex(chunks)
    print(f"  first pass   {r['first']:8.1f} chunks/s (the engine)")
    print(f"  second pass  {r['second']:8.1f} chunks/s ({r['hits']:.0f} cache hits)")
    verdict = "PASS" if r["speedup"] >= SPEEDUP_TARGET and r["identical"] else "FAIL"
    print(f"  speed-up     {r['speedup']:8.1f}x, vectors identical: {r['identical']}  [{verdict}: >= 20x, identical]")
    print(f"A cache of a tenth of {len(chunks):,} chunks, then all of them ...", flush=True)
    b = bound(chunks)
    verdict = "PASS" if b["held"] <= b["limit"] else "FAIL"
    print(f"  held {b['held']:,.0f} of {b['limit']:,} bytes, {b['evictions']:,.0f} evictions  [{verdict}: within]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
