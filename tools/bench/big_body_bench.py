"""How long one 8 MiB request holds up everyone else: /ready's latency while it is parsed.

A real gateway (bundled model, compile off) gets one body at the 8 MiB cap at a time, while a second
thread asks /ready every 5 ms; printed per body: the request's own time and its status, and /ready's
p50 and worst latency meanwhile (target: worst under 100 ms). Bodies: one list of 1.4 million token
ids (served: one input, truncated), and, naming a model the gateway does not serve so that the figure
is parsing and validation alone (a 404 once parsed), 2,000 lists of 700 ids and 2,000 texts of 4 KB.

    python tools/bench/big_body_bench.py [--src DIR]   # --src: another checkout's payload/src, for before/after
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import httpx
import orjson
from gateway_bench import READY_TIMEOUT, BenchGateway

MODEL = "all-minilm-l6-v2"
UNSERVED = "not-served-here"
CAP = 8 << 20


def bodies() -> dict[str, bytes]:
    ids = [(i * 7919) % 29000 + 1000 for i in range(1_400_000)]
    text = "def handler(event, context):\n    return {'status': 200, 'body': event}\n" * 55
    found = {
        "1 list of 1.4M ids": {"model": MODEL, "input": ids},
        "2,000 lists of 700 ids": {"model": UNSERVED, "input": [ids[i : i + 700] for i in range(0, 1_400_000, 700)]},
        "2,000 texts of 4 KB": {"model": UNSERVED, "input": [text] * 2000},
    }
    return {name: orjson.dumps(doc) for name, doc in found.items()}


def measure(url: str, body: bytes) -> tuple[float, int, list[float]]:
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get(url + "/ready")
                latencies.append(time.perf_counter() - started)
                time.sleep(0.005)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.2)
    started = time.perf_counter()
    status = httpx.post(
        url + "/v1/embeddings", content=body, headers={"Content-Type": "application/json"}, timeout=600
    ).status_code
    took = time.perf_counter() - started
    done.set()
    poller.join()
    return took, status, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", help="payload/src of the gateway to measure (default: this checkout)")
    args = parser.parse_args()
    extra = {"EMBEDSTACK_MAX_BODY_BYTES": str(CAP)}
    if args.src:
        extra["PYTHONPATH"] = os.path.abspath(args.src)
    with BenchGateway("off", 0, extra_env=extra) as gateway:
        gateway.wait_ready(READY_TIMEOUT)
        print(f"{'body':<24} {'MiB':>5} {'status':>6} {'request s':>9} {'/ready p50 ms':>13} {'/ready max ms':>13}")
        for name, body in bodies().items():
            assert len(body) <= CAP, (name, len(body))
            took, status, latencies = measure(gateway.url, body)
            p50, worst = statistics.median(latencies) * 1000, max(latencies) * 1000
            print(
                f"{name:<24} {len(body) / 2**20:>5.2f} {status:>6} {took:>9.2f} {p50:>13.1f} {worst:>13.1f}", flush=True
            )


if __name__ == "__main__":
    main()
