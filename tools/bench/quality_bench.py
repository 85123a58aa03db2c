"""Retrieval quality of `embedstack search` on a code-search set built from this machine's standard library.

The CodeSearchNet recipe: for a function with a docstring, the query is the docstring's first sentence and
the document is the function with its docstring removed. Functions are taken from the standard library
of the Python running this script (tests excluded), queries of 4 to 40 words, documents of 3 lines or
more; a query or a document that occurs twice is dropped; the set is the first N by sha256 of
"path:line:name", so it is the same on every run with the same Python.

Each document is one file; they are indexed with the real index path (embedstack.indexing.Indexer)
through a real gateway (`embedstack serve` in a subprocess, the bundled model) into the embedded Qdrant
(Qdrant Edge, as `embedstack index` uses it), and every query is searched three ways:
- dense: the served model's vectors (what Roo Code does);
- bm25: bm25s over the same chunks, with the sparse vectors' terms (identifiers split at _ and case);
- hybrid: Qdrant's sparse BM25 vectors and the dense ones, fused by Qdrant's distribution-based
  score fusion (what `embedstack search` does by default), and hybrid-rrf, the same fused by
  reciprocal rank.
A hit is the query's file; a file's rank is that of its best chunk. Prints recall@1, recall@10 and MRR
(over the first 50 chunks). Exit status 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import hashlib
import json
import platform
import re
import sys
import sysconfig
import tempfile
import textwrap
import time
from pathlib import Path

import bm25s
import numpy as np
from embedstack.indexing.endpoint import Endpoint
from embedstack.indexing.indexer import Indexer
from embedstack.indexing.search import nearest
from embedstack.indexing.sparse import terms
from embedstack.indexing.store import NOT_METADATA, open_embedded
from gateway_bench import BenchGateway
from qdrant_client import models

DEFAULT_PAIRS = 2000
DEPTH = 50  # chunks looked at per query
READY_TIMEOUT = 300
# name, search mode, fusion: `hybrid` is what `embedstack search` does by default
HYBRIDS = [
    ("dense", "dense", models.Fusion.RRF),
    ("hybrid-rrf", "hybrid", models.Fusion.RRF),
    ("hybrid", "hybrid", models.Fusion.DBSF),
]
SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


def first_sentence(doc: str) -> str:
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    match = _SENTENCE_END.search(paragraph)
    return paragraph[: match.start() + 1] if match else paragraph


def pairs_from(path: Path, rel: str) -> list[tuple[str, str, str]]:
    """(key, query, document) for each documented function of one file."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    lines = source.splitlines()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.name.startswith("test"):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        query = first_sentence(doc)
        if not 4 <= len(query.split()) <= 40:
            continue
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        docstring = node.body[0]
        kept = lines[first - 1 : docstring.lineno - 1] + lines[docstring.end_lineno : node.end_lineno]
        document = textwrap.dedent("\n".join(kept)).strip("\n") + "\n"
        if sum(1 for ln in kept if ln.strip()) < 3:
            continue
        out.append((f"{rel}:{node.lineno}:{node.name}", query, document))
    return out


def build_set(n: int) -> list[tuple[str, str, str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if SKIPPED_DIRS & set(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        found.extend(pairs_from(path, rel.as_posix()))
    queries = {}
    documents = {}
    for _, q, d in found:
        queries[q] = queries.get(q, 0) + 1
        documents[d] = documents.get(d, 0) + 1
    unique = [p for p in found if queries[p[1]] == 1 and documents[p[2]] == 1]
    unique.sort(key=lambda p: hashlib.sha256(p[0].encode()).hexdigest())
    if len(unique) < n:
        raise SystemExit(f"quality_bench: only {len(unique)} pairs in {stdlib}, fewer than {n}")
    return unique[:n]


def ranks_of(hit_files: list[list[str]], targets: list[str]) -> list[int | None]:
    out = []
    for files, target in zip(hit_files, targets, strict=True):
        distinct = list(dict.fromkeys(files))
        out.append(distinct.index(target) + 1 if target in distinct else None)
    return out


def figures(ranks: list[int | None]) -> dict[str, float]:
    n = len(ranks)
    return {
        "recall@1": sum(1 for r in ranks if r == 1) / n,
        "recall@10": sum(1 for r in ranks if r is not None and r <= 10) / n,
        "mrr": sum(1 / r for r in ranks if r is not None) / n,
    }


def all_chunks(client, collection: str) -> list[tuple[str, str]]:
    out, offset = [], None
    flt = models.Filter(must_not=[NOT_METADATA])
    while True:
        points, offset = client.scroll(collection, scroll_filter=flt, limit=2048, offset=offset, with_payload=True)
        out.extend((p.payload["filePath"], p.payload["codeChunk"]) for p in points)
        if offset is None:
            return out


def evaluate(url: str, api_key: str, model: str | None, n: int, workdir: Path) -> dict:
    t0 = time.perf_counter()
    pairs = build_set(n)
    docs = workdir / "docs"
    docs.mkdir()
    targets, queries = [], []
    for i, (_, query, document) in enumerate(pairs):
        name = f"f{i:05d}.py"
        (docs / name).write_text(document)
        targets.append(name)
        queries.append(query)
    print(
        f"  {len(pairs)} pairs from {sysconfig.get_paths()['stdlib']} in {time.perf_counter() - t0:.1f} s", flush=True
    )

    endpoint = Endpoint(url, api_key, model, batch_size=32, parallel=2)
    info = endpoint.resolve()
    client = open_embedded(workdir / "qdrant")
    try:
        indexer = Indexer(endpoint, client, "quality", where="the bench's embedded Qdrant", progress=True)
        summary = indexer.run([docs])
        print("  " + "\n  ".join(summary.lines()), flush=True)

        t1 = time.perf_counter()
        qvectors = endpoint.embed_documents(queries, input_type="query")
        print(f"  {len(queries)} queries embedded in {time.perf_counter() - t1:.1f} s", flush=True)
        flt = models.Filter(must_not=[NOT_METADATA])
        results: dict[str, list[int | None]] = {}
        timing: dict[str, float] = {}
        for name, mode, fusion in HYBRIDS:
            t2 = time.perf_counter()
            hit_files = []
            for q, v in zip(queries, qvectors, strict=True):
                points = nearest(client, "quality", q, v, flt, DEPTH, mode, fusion).points
                hit_files.append([p.payload["filePath"] for p in points])
            timing[name] = (time.perf_counter() - t2) / len(queries)
            results[name] = ranks_of(hit_files, targets)

        t3 = time.perf_counter()
        chunks = all_chunks(client, "quality")
        retriever = bm25s.BM25()
        retriever.index([terms(text) for _, text in chunks], show_progress=False)
        found, _ = retriever.retrieve(
            [terms(q) or ["_"] for q in queries], k=min(DEPTH, len(chunks)), show_progress=False
        )
        results["bm25"] = ranks_of([[chunks[int(i)][0] for i in row] for row in np.asarray(found)], targets)
        timing["bm25"] = (time.perf_counter() - t3) / len(queries)
    finally:
        client.close()
    return {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "model": info.id,
        "dimension": info.dimension,
        "max_tokens": info.max_tokens,
        "pairs": len(pairs),
        "chunks": summary.chunks,
        "index_seconds": summary.seconds,
        "methods": {
            name: {**figures(results[name]), "seconds_per_query": timing[name]}
            for name in ("dense", "bm25", "hybrid-rrf", "hybrid")
        },
    }


def print_table(report: dict) -> None:
    print(
        f"\n{report['pairs']} stdlib pairs (Python {report['python']}), {report['chunks']} chunks, "
        f"model {report['model']}, {report['date']}\n"
    )
    print("| method | recall@1 | recall@10 | MRR | ms/query |")
    print("|---|---|---|---|---|")
    best = max(report["methods"], key=lambda m: report["methods"][m]["mrr"])
    for name, f in report["methods"].items():
        label = f"**{name}**" if name == best else name
        print(
            f"| {label} | {f['recall@1']:.3f} | {f['recall@10']:.3f} | {f['mrr']:.3f} | "
            f"{f['seconds_per_query'] * 1000:.1f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pairs", type=int, default=DEFAULT_PAIRS, help=f"query/document pairs (default {DEFAULT_PAIRS})"
    )
    parser.add_argument("--base-url", help="use this endpoint instead of starting a gateway")
    parser.add_argument("--api-key", default="", help="its API key")
    parser.add_argument("--model", help="its model (default: the first it serves)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="embedstack-quality-") as tmp:
        if args.base_url:
            report = evaluate(args.base_url, args.api_key, args.model, args.pairs, Path(tmp))
        else:
            with BenchGateway("auto", 0) as gateway:
                print(f"== gateway {gateway.url}, log in {gateway.log_path} ==", flush=True)
                print(f"  ready after {gateway.wait_ready(READY_TIMEOUT):.1f} s", flush=True)
                report = evaluate(gateway.url + "/v1", "", args.model, args.pairs, Path(tmp))
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
