"""`embedstack search`: the query embedded as a query, the nearest chunks, Roo Code's filters."""

from __future__ import annotations

import os
import textwrap
from dataclasses import asdict, dataclass

from qdrant_client import models

from embedstack.errors import ConfigError
from embedstack.indexing.endpoint import Endpoint
from embedstack.indexing.sparse import SPARSE_NAME, query_vector
from embedstack.indexing.store import NOT_METADATA, collection_dimension, has_sparse, is_embedded, path_filter

SNIPPET_LINES = 3
SEARCH_PARAMS = models.SearchParams(hnsw_ef=128, exact=False)
HYBRID_CANDIDATES = 50
MODES = ("dense", "hybrid")
# The best of the two on tools/bench/quality_bench.py's set (README, "Retrieval quality")
DEFAULT_MODE = "hybrid"


@dataclass(frozen=True, slots=True)
class Hit:
    file: str  # one path, as `file:start-end` prints it: the file opens from here
    start_line: int
    end_line: int
    score: float
    snippet: str


def _shown_path(payload: dict, workspace: str | None) -> str:
    """A path the user can open from here: our own points know their root; Roo Code's `filePath` is relative to
    the workspace folder, when the search names it."""
    rel = str(payload.get("filePath", "?"))
    root = payload.get("indexRoot")
    if not isinstance(root, str):
        root = workspace
    if root is None:
        return rel
    full = os.path.join(root, rel)
    here = os.getcwd()
    return os.path.relpath(full, here) if full.startswith(here + os.sep) else full


def nearest(
    client,
    collection: str,
    query: str,
    vector: list[float],
    flt: models.Filter | None,
    limit: int,
    mode: str,
    fusion: models.Fusion = models.Fusion.DBSF,
    sparse: models.SparseVector | None = None,
) -> models.QueryResponse:
    """Dense: the nearest vectors. Hybrid: the dense and the sparse (BM25) candidates, each list
    `HYBRID_CANDIDATES` deep, fused by Qdrant's distribution-based score fusion (each list's scores
    normalised by their mean and spread, then summed): on the bench's set it gave the best MRR and
    recall@1, reciprocal-rank fusion (Fusion.RRF) the best recall@10 by a hair. `sparse` stands in for the
    query's own BM25 terms (the scale benchmark's synthetic ones)."""
    # Roo Code's hnsw_ef for a deployed Qdrant; the embedded one builds no HNSW graph (edge.py) and searches exactly
    params = None if is_embedded(client) or _local_mode(client) else SEARCH_PARAMS
    if mode == "dense":
        return client.query_points(
            collection, query=vector, query_filter=flt, limit=limit, with_payload=True, search_params=params
        )
    depth = max(limit, HYBRID_CANDIDATES)
    return client.query_points(
        collection,
        prefetch=[
            models.Prefetch(query=vector, filter=flt, limit=depth, params=params),
            models.Prefetch(query=sparse or query_vector(query), using=SPARSE_NAME, filter=flt, limit=depth),
        ],
        query=models.FusionQuery(fusion=fusion),
        limit=limit,
        with_payload=True,
    )


def _local_mode(client) -> bool:
    """qdrant-client's own local mode (only the benchmarks still open one) takes no search params."""
    options = getattr(client, "init_options", {})
    return bool(options.get("path") or options.get("location"))


def search(
    endpoint: Endpoint,
    client,
    collection: str,
    query: str,
    *,
    limit: int = 10,
    prefix: str | None = None,
    where: str = "Qdrant",
    mode: str | None = None,
    workspace: str | None = None,
) -> list[Hit]:
    """The best `limit` chunks; `mode` None is DEFAULT_MODE where the collection allows it, else dense.
    `workspace`: the folder a Roo Code collection's paths are relative to."""
    model = endpoint.model or endpoint.resolve()
    dimension = collection_dimension(client, collection)
    if dimension is None:
        raise ConfigError(f"there is no collection {collection!r} in {where}; run `embedstack index` first")
    if dimension != model.dimension:
        raise ConfigError(
            f"collection {collection!r} in {where} holds {dimension}-dimensional vectors; "
            f"model {model.id!r} gives {model.dimension}: search it with the model that indexed it"
        )
    if mode is None:
        mode = DEFAULT_MODE if DEFAULT_MODE == "dense" or has_sparse(client, collection) else "dense"
    elif mode == "hybrid" and not has_sparse(client, collection):
        raise ConfigError(f"collection {collection!r} has no sparse vectors (Roo Code's do not): use --mode dense")
    vector = endpoint.embed_query(query)
    flt = models.Filter(must=path_filter(prefix) or None, must_not=[NOT_METADATA])
    result = nearest(client, collection, query, vector, flt, limit, mode)
    hits = []
    for point in result.points:
        payload = point.payload or {}
        if not all(k in payload for k in ("filePath", "codeChunk", "startLine", "endLine")):
            continue  # Roo Code drops such points too (isPayloadValid)
        lines = textwrap.dedent(str(payload["codeChunk"])).strip("\n").splitlines()[:SNIPPET_LINES]
        hits.append(
            Hit(
                file=_shown_path(payload, workspace),
                start_line=int(payload["startLine"]),
                end_line=int(payload["endLine"]),
                score=float(point.score),
                snippet="\n".join(lines),
            )
        )
    return hits


def format_hits(hits: list[Hit]) -> str:
    if not hits:
        return "no match"
    out = []
    for hit in hits:
        out.append(f"{hit.file}:{hit.start_line}-{hit.end_line}  {hit.score:.3f}")
        out.extend("    " + ln[:160] for ln in hit.snippet.splitlines())
    return "\n".join(out)


def hits_as_json(hits: list[Hit]) -> list[dict]:
    return [asdict(h) for h in hits]
