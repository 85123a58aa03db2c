"""How `embedstack search`'s embedded store scales: Qdrant Edge (the store now) against qdrant-client's local mode
(the store before), side by side, on synthetic chunks in Roo Code's schema. No model, no gateway.

For each dimension and size, each store is measured in subprocesses of its own, so one store's memory never
counts against the other's: one writes the collection as `embedstack index` does (ensure_collection, batches of
256 points with the dense vector, a BM25-shaped sparse vector and Roo Code's payload; Qdrant Edge then runs its
optimizer, as the indexer does), and a fresh one opens it and searches as `embedstack search` does (search.nearest
with the metadata filter, limit 10; hybrid fuses 50 dense and 50 sparse candidates by DBSF). Printed per row:
upsert seconds (with the optimizer, which builds the HNSW graph of --hnsw rows), disk, RSS of the interpreter
with its imports before opening, right after opening and after the queries, open seconds, the first query after
opening (what one `embedstack search` waits for beside the open: the vectors' pages are mapped in then), and
dense, filtered (a directory prefix holding 0.5 % of the chunks, Roo Code's pathSegments filter) and hybrid
p50/p95.

Vectors are random unit vectors from a seeded generator, the sparse vectors Zipf-distributed term ids with BM25
weights, the same for every store, so each store's top-10 sets are compared with Qdrant Edge's exact ones too.
Local mode holds every point as a Python object and scans them all per query: where it would take too long or
too much memory (estimated from its figures at 100k x 384: 43 s to open, 2.9 GB, 5.4 s a query) the row says
it was skipped and why.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

SIZES = [3_000, 30_000, 100_000, 300_000]
DIMS = [384, 1024]
QUERIES = 50
BATCH = 256
TOP_DIRS, SUB_DIRS, FILE_CHUNKS = 20, 10, 10  # a prefix dirNN/subM holds 1/200 of the chunks
VOCABULARY, DOC_TERMS, QUERY_TERMS = 50_000, 60, 4
COLLECTION = "bench"
# qdrant-client's local mode: skip above this many stored floats (100k x 384, where it took 43 s to open and
# 2.9 GB) or estimated minutes; fewer queries as it slows (~5 s each at 100k x 384)
LOCAL_MAX_FLOATS = 100_000 * 384
LOCAL_QUERY_SECONDS_PER_FLOAT = 5.4 / (100_000 * 384)


def rss_mb() -> tuple[float, float]:
    """(VmRSS, RssAnon) of this process in MB: the second leaves out file pages the kernel can drop."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["RssAnon"]


def disk_mb(path: Path) -> float:
    """Blocks in use, as du counts them (Qdrant's files are preallocated and sparse: their sizes say more)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file()) / 1e6


# -- the data: the same for every store ------------------------------------------------------------


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def zipf_terms(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.zipf(1.3, n) - 1) % VOCABULARY


def batch_points(first: int, n: int, dim: int, seed: int):
    """Points first..first+n-1 in Roo Code's schema plus embedstack's fields, as the indexer writes them."""
    from embedstack.indexing.sparse import AVERAGE_TERMS, K1, SPARSE_NAME, B
    from embedstack.indexing.store import POINT_NAMESPACE, path_segments
    from qdrant_client import models

    rng = np.random.default_rng([seed, first])
    vectors = unit_rows(rng, n, dim)
    out = []
    for i in range(n):
        k = first + i
        file_no = k // FILE_CHUNKS
        path = f"dir{file_no % TOP_DIRS:02d}/sub{(file_no // TOP_DIRS) % SUB_DIRS}/file{file_no}.py"
        ids, tf = np.unique(zipf_terms(rng, DOC_TERMS), return_counts=True)
        norm = K1 * (1 - B + B * DOC_TERMS / AVERAGE_TERMS)
        weights = tf * (K1 + 1) / (tf + norm)
        segment = f"{seed:08x}{k:056x}"
        start = (k % FILE_CHUNKS) * 30 + 1
        out.append(
            models.PointStruct(
                id=str(uuid.uuid5(POINT_NAMESPACE, segment)),
                vector={
                    "": vectors[i].tolist(),
                    SPARSE_NAME: models.SparseVector(indices=ids.tolist(), values=weights.tolist()),
                },
                payload={
                    "filePath": path,
                    "codeChunk": f"def function_{k}(value):\n    return transform(value, {k})\n" * 12,
                    "startLine": start,
                    "endLine": start + 24,
                    "segmentHash": segment,
                    "pathSegments": path_segments(path),
                    "fileHash": f"{file_no:064x}",
                    "indexRoot": "/bench/repository",
                },
            )
        )
    return out


def queries(dim: int, n: int, seed: int) -> list[tuple[list[float], object]]:
    from qdrant_client import models

    out = []
    for i in range(n):  # query i is the same whatever n is: stores with fewer queries compare on the first ones
        rng = np.random.default_rng([seed, 1 << 40, i])
        terms = sorted(set(zipf_terms(rng, QUERY_TERMS).tolist()))
        out.append((unit_rows(rng, 1, dim)[0].tolist(), models.SparseVector(indices=terms, values=[1.0] * len(terms))))
    return out


# -- the children ----------------------------------------------------------------------------------


def open_store(store: str, path: Path):
    if store.startswith("hnsw-") and not (path / "edge").exists():  # the writer: HNSW for every segment
        from embedstack.indexing.edge import EdgeCollections

        m, ef_construct = map(int, store.split("-")[1:])
        client = EdgeCollections(path / "edge", indexing_threshold_kb=1, hnsw=(m, ef_construct))
        return client
    if store == "edge" or store.startswith("hnsw-"):
        from embedstack.indexing.store import open_embedded

        return open_embedded(path)
    from qdrant_client import QdrantClient

    with warnings.catch_warnings():  # it warns about its own size above 20,000 points: that is what is measured
        warnings.simplefilter("ignore")
        return QdrantClient(path=str(path))


def child_write(store: str, path: Path, size: int, dim: int, seed: int) -> dict:
    from embedstack.indexing.store import ensure_collection, is_embedded

    client = open_store(store, path)
    started = time.perf_counter()
    ensure_collection(client, COLLECTION, dim, False, store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for first in range(0, size, BATCH):
            client.upsert(COLLECTION, points=batch_points(first, min(BATCH, size - first), dim, seed), wait=True)
    upserted = time.perf_counter() - started
    if is_embedded(client):  # with HNSW (--hnsw): where the graph is built
        client.optimize(COLLECTION)
    total = time.perf_counter() - started
    client.close()
    return {"upsert_s": total, "optimize_s": total - upserted, "disk_mb": disk_mb(path)}


def child_read(store: str, path: Path, dim: int, seed: int, n_queries: int) -> dict:
    from embedstack.indexing.search import nearest
    from embedstack.indexing.store import NOT_METADATA, path_filter
    from qdrant_client import models

    import_rss = rss_mb()[0]
    started = time.perf_counter()
    client = open_store(store, path)
    client.count(COLLECTION)  # Qdrant Edge loads a collection's shard on first use: part of opening it
    opened = time.perf_counter() - started
    rss_open, anon_open = rss_mb()
    first = queries(dim, 1, seed + 1)[0][0]
    started = time.perf_counter()
    nearest(client, COLLECTION, "", first, models.Filter(must_not=[NOT_METADATA]), 10, "dense")
    first_query = time.perf_counter() - started
    plain = models.Filter(must_not=[NOT_METADATA])
    prefix = models.Filter(must=path_filter("dir07/sub3"), must_not=[NOT_METADATA])
    kinds = {
        "dense": lambda d, s: nearest(client, COLLECTION, "", d, plain, 10, "dense"),
        "filtered": lambda d, s: nearest(client, COLLECTION, "", d, prefix, 10, "dense"),
        "hybrid": lambda d, s: nearest(client, COLLECTION, "", d, plain, 10, "hybrid", sparse=s),
    }
    figures: dict = {"open_s": opened, "first_query_ms": first_query * 1000, "rss_import_mb": import_rss,
                     "rss_open_mb": rss_open, "anon_open_mb": anon_open}  # fmt: skip
    top10: dict[str, list[list[str]]] = {}
    qs = queries(dim, n_queries + 2, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind, run in kinds.items():
            for d, s in qs[:2]:  # warm-up: first touches of the files
                run(d, s)
            times, top10[kind] = [], []
            for d, s in qs[2:]:
                t = time.perf_counter()
                points = run(d, s).points
                times.append(time.perf_counter() - t)
                top10[kind].append([str(p.id) for p in points])
                if kind == "filtered":
                    assert all(p.payload["filePath"].startswith("dir07/sub3/") for p in points)
            figures[f"{kind}_p50_ms"] = float(np.percentile(times, 50) * 1000)
            figures[f"{kind}_p95_ms"] = float(np.percentile(times, 95) * 1000)
    figures["rss_queries_mb"], figures["anon_queries_mb"] = rss_mb()
    figures["top10"] = top10
    client.close()
    return figures


def run_child(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the parent ------------------------------------------------------------------------------------


def local_mode_plan(size: int, dim: int, max_minutes: float, most: int) -> tuple[int, str | None]:
    """How many queries local mode gets, or why it is skipped."""
    floats = size * dim
    per_query = floats * LOCAL_QUERY_SECONDS_PER_FLOAT
    if floats > LOCAL_MAX_FLOATS:
        gb = 2.9 * floats / LOCAL_MAX_FLOATS
        return 0, (
            f"skipped: {size:,} x {dim} would hold ~{gb:.0f} GB in Python objects and take ~{per_query:.0f} s "
            f"a query, ~{43 * floats / LOCAL_MAX_FLOATS / 60:.0f} min to open (scaled from 100k x 384)"
        )
    n = int(max(5, min(most, max_minutes * 60 / 3 / max(per_query, 1e-3))))
    return n, None


def measure(store: str, size: int, dim: int, seed: int, n_queries: int, workdir: Path) -> dict:
    path = workdir / f"{store}-{size}-{dim}"
    shutil.rmtree(path, ignore_errors=True)
    try:
        common = ["--store", store, "--path", str(path), "--dim", str(dim), "--seed", str(seed)]
        wrote = run_child(["write", *common, "--size", str(size)], timeout=3600)
        read = run_child(["read", *common, "--queries", str(n_queries)], timeout=3600)
        return {**wrote, **read, "queries": n_queries}
    finally:
        shutil.rmtree(path, ignore_errors=True)


def store_name(store: str) -> str:
    if store.startswith("hnsw-"):
        m, ef_construct = store.split("-")[1:]
        return f"Qdrant Edge, HNSW m={m} ef_construct={ef_construct}"
    return {"edge": "Qdrant Edge", "local": "local mode"}[store]


def same_top10(a: dict, b: dict) -> str:
    shares = []
    for kind in ("dense", "hybrid"):
        pairs = list(zip(a["top10"][kind], b["top10"][kind], strict=False))
        shares.append(f"{kind} {sum(set(x) == set(y) for x, y in pairs)}/{len(pairs)}")
    return ", ".join(shares)


def row(label: str, f: dict) -> str:
    return (
        f"| {label} | {f['upsert_s']:.1f} | {f['disk_mb']:.0f} | {f['rss_import_mb']:.0f} | "
        f"{f['rss_open_mb']:.0f} ({f['anon_open_mb']:.0f}) | "
        f"{f['rss_queries_mb']:.0f} ({f['anon_queries_mb']:.0f}) | {f['open_s']:.2f} | {f['first_query_ms']:.0f} | "
        + " | ".join(f"{f[f'{k}_p50_ms']:.1f} / {f[f'{k}_p95_ms']:.1f}" for k in ("dense", "filtered", "hybrid"))
        + " |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="chunks per collection, comma-separated")
    parser.add_argument("--dims", default=",".join(map(str, DIMS)), help="vector dimensions, comma-separated")
    parser.add_argument("--queries", type=int, default=QUERIES, help=f"queries of each kind (default {QUERIES})")
    parser.add_argument("--stores", default="edge,local", help="edge (Qdrant Edge), local (qdrant-client's local mode)")
    parser.add_argument(
        "--hnsw",
        action="append",
        default=[],
        metavar="M/EF",
        help="also Qdrant Edge with an HNSW graph of this m/ef_construct on every segment (e.g. 16/100; 64/512 is "
        "Roo Code's): its build is in 'upsert s'; repeat for several",
    )
    parser.add_argument(
        "--local-minutes", type=float, default=3.0, help="about how long local mode's queries may take per row"
    )
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure here")
    parser.add_argument("--child", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "write":
        print(json.dumps(child_write(args.store, args.path, args.size, args.dim, args.seed)))
        return 0
    if args.child == "read":
        print(json.dumps(child_read(args.store, args.path, args.dim, args.seed, args.queries)))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    stores = args.stores.split(",") + ["hnsw-" + h.replace("/", "-") for h in args.hnsw]
    report = {
        "date": datetime.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "rows": [],
    }
    print(
        f"search_scale_bench: {report['date']}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        "RSS in MB with anonymous memory in brackets (the rest is file pages the kernel can drop)\n",
        flush=True,
    )
    header = (
        "| store, chunks x dims | upsert s | disk MB | RSS before open | RSS after open | RSS after queries | open s | "
        "first query ms | dense p50 / p95 ms | filtered p50 / p95 ms | hybrid p50 / p95 ms |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory(prefix="embedstack-scale-") as tmp:
        for dim in dims:
            print(header, flush=True)
            for size in sizes:
                measured: dict[str, dict] = {}
                for store in stores:
                    label = f"{store_name(store)}, {size:,} x {dim}"
                    n = args.queries
                    if store == "local":
                        n, why = local_mode_plan(size, dim, args.local_minutes, args.queries)
                        if why:
                            print(f"| {label} | {why} |||||||||", flush=True)
                            report["rows"].append({"store": store, "size": size, "dim": dim, "skipped": why})
                            continue
                    f = measure(store, size, dim, args.seed, n, Path(tmp))
                    measured[store] = f
                    print(row(label, f), flush=True)
                    report["rows"].append({"store": store, "size": size, "dim": dim, **f})
                for other in [st for st in measured if st != "edge" and "edge" in measured]:
                    same = same_top10(measured["edge"], measured[other])
                    print(f"| same top-10 sets, {store_name(other)} vs exact: {same} ||||||||||", flush=True)
            print(f"\nload after {dim} dims: {os.getloadavg()[0]:.1f}\n", flush=True)
    if args.json:
        for r in report["rows"]:
            r.pop("top10", None)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
