"""The embedded store: Qdrant's own engine in-process (qdrant-edge-py), behind the QdrantClient calls embedstack makes.

The indexer and search speak qdrant-client's API (`upsert`, `scroll`, `query_points`, ... with
`qdrant_client.models` types) to a deployed Qdrant; `EdgeCollections` answers the same calls on Qdrant Edge
shards, one shard (a directory) per collection under one root, so both paths share one indexer and one search.
Only the parts of the API embedstack uses are translated; anything else is a TypeError naming it.

qdrant-edge's API is read from its wheel's stubs (qdrant_edge.pyi, qdrant-edge-py 0.9.0) and the qdrant
repository's lib/edge (python/src, src/edge_shard/mod.rs: the config persisted in `edge_config.json`, the WAL
that locks its directory, the flush on drop; shard/src/optimizers/config.rs: an indexing threshold of 0 KB
disables HNSW). Locking the whole root against a second process is the caller's (store.py).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qdrant_edge as edge
from qdrant_client import models
from qdrant_client.http.models import QueryResponse

from embedstack.errors import ConfigError

# Measured with tools/bench/search_scale_bench.py on a 2-core Zen 4 (README, "How large a codebase"): at 30k x 384,
# exact search took 3.8 ms a query; an HNSW graph with Qdrant's default m=16/ef_construct=100 took 13 s to build
# and answered in 4.0 ms with other top-10s, Roo Code's m=64/ef_construct=512 took 66 s and 8.4 ms. Exact search
# of 300k chunks takes 32 ms (62 at 1,024 dims). Qdrant would build the graph for segments above the indexing
# threshold in the optimize() that ends `embedstack index`; 0 KB means never.
INDEXING_THRESHOLD_KB = 0
# Vectors are mapped from their files and read on demand (Qdrant Edge's default, Cached, reads them all in on open:
# at 100k x 384, 516 MB RSS after open against 328 MB; the first query then maps them in, from the page cache).
VECTOR_MEMORY = edge.Memory.Cold
# Names become directory names: Qdrant's own rule is looser, the file system's is not.
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}$")

_DISTANCES = {
    models.Distance.COSINE: edge.Distance.Cosine,
    models.Distance.DOT: edge.Distance.Dot,
    models.Distance.EUCLID: edge.Distance.Euclid,
    models.Distance.MANHATTAN: edge.Distance.Manhattan,
}
_DISTANCE_NAMES = {"Cosine": models.Distance.COSINE, "Dot": models.Distance.DOT,
                   "Euclid": models.Distance.EUCLID, "Manhattan": models.Distance.MANHATTAN}  # fmt: skip
_SCHEMAS = {models.PayloadSchemaType.KEYWORD: edge.PayloadSchemaType.Keyword}


@dataclass(frozen=True, slots=True)
class _Config:
    params: models.CollectionParams


@dataclass(frozen=True, slots=True)
class CollectionView:
    """What `get_collection` gives: `.config.params.vectors` and `.sparse_vectors`, as qdrant-client's has."""

    config: _Config


def _unsupported(what: Any) -> TypeError:
    return TypeError(f"the embedded Qdrant does not translate {type(what).__name__}: {what!r}")


def point_id(value: Any) -> str | int:
    """qdrant-edge returns UUIDs as uuid.UUID; qdrant-client's records carry strings."""
    return str(value) if isinstance(value, uuid.UUID) else value


def from_vector(vector: Any) -> Any:
    """qdrant-edge's vectors as qdrant-client's: its SparseVector is its own type."""
    if isinstance(vector, dict):
        return {name: from_vector(v) for name, v in vector.items()}
    if isinstance(vector, edge.SparseVector):
        return models.SparseVector(indices=list(vector.indices), values=list(vector.values))
    return vector


def _record(r: Any) -> models.Record:
    return models.Record(id=point_id(r.id), payload=r.payload, vector=from_vector(r.vector))


# -- qdrant_client.models -> qdrant_edge -------------------------------------------------------------


def _condition(c: Any) -> Any:
    if isinstance(c, models.Filter):
        return to_filter(c)
    if isinstance(c, models.HasIdCondition):
        return edge.HasIdCondition(set(c.has_id))
    if isinstance(c, models.FieldCondition):
        m = c.match
        if isinstance(m, models.MatchValue):
            return edge.FieldCondition(c.key, match=edge.MatchValue(m.value))
        if isinstance(m, models.MatchAny):
            return edge.FieldCondition(c.key, match=edge.MatchAny(list(m.any)))
        if isinstance(m, models.MatchExcept):
            return edge.FieldCondition(c.key, match=edge.MatchExcept(list(m.except_)))
    raise _unsupported(c)


def to_filter(f: models.Filter | None) -> Any:
    if f is None:
        return None

    def conditions(items: Any) -> list | None:
        if items is None:
            return None
        return [_condition(c) for c in (items if isinstance(items, list) else [items])] or None

    if f.min_should is not None:
        raise _unsupported(f.min_should)
    return edge.Filter(must=conditions(f.must), should=conditions(f.should), must_not=conditions(f.must_not))


def _named(vector: Any) -> Any:
    if isinstance(vector, models.SparseVector):
        return edge.SparseVector(list(vector.indices), [float(v) for v in vector.values])
    if isinstance(vector, list):
        return [float(v) for v in vector]
    raise _unsupported(vector)


def to_vector(vector: Any) -> Any:
    if isinstance(vector, dict):
        return {name: _named(v) for name, v in vector.items()}
    return _named(vector)


def _params(p: models.SearchParams | None) -> Any:
    if p is None:
        return None
    return edge.SearchParams(hnsw_ef=p.hnsw_ef, exact=bool(p.exact))


def _nearest(query: Any, using: str | None) -> Any:
    if isinstance(query, models.NearestQuery):
        query = query.nearest
    return edge.Query.Nearest(_named(query), using=using)


def _fusion(query: Any) -> Any:
    if isinstance(query, models.FusionQuery):
        if query.fusion == models.Fusion.DBSF:
            return edge.Fusion.Dbsf()
        if query.fusion == models.Fusion.RRF:
            return edge.Fusion.Rrf(k=2)  # Qdrant's DEFAULT_RRF_K (segment/src/common/reciprocal_rank_fusion.rs)
    raise _unsupported(query)


def _prefetch(p: models.Prefetch) -> Any:
    if p.prefetch:
        raise _unsupported(p.prefetch)
    return edge.Prefetch(
        limit=p.limit,
        query=_nearest(p.query, p.using),
        params=_params(p.params),
        filter=to_filter(p.filter),
        score_threshold=p.score_threshold,
    )


def _with_payload(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _unsupported(value)


# -- the store -------------------------------------------------------------------------------------


class EdgeCollections:
    """Collections of one embedded store: `<root>/<name>/` is a Qdrant Edge shard. Shards are loaded on first
    use and flushed on close. Not safe for two processes at once: the caller holds the root's lock."""

    embedded = True

    def __init__(
        self, root: Path, *, indexing_threshold_kb: int = INDEXING_THRESHOLD_KB, hnsw: tuple[int, int] | None = None
    ):
        """`indexing_threshold_kb` and `hnsw` (m, ef_construct) of new collections: the benchmark's, to measure
        what an HNSW graph would cost."""
        self.root = root
        self.indexing_threshold_kb = indexing_threshold_kb
        self.hnsw = hnsw
        self._shards: dict[str, Any] = {}

    # the directory of a collection, and its shard
    def _path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ConfigError(
                f"collection name {name!r}: the embedded Qdrant takes letters, digits, '_', '-' and '.' "
                "(up to 255, not starting with '.')"
            )
        return self.root / name

    def _shard(self, name: str) -> Any:
        shard = self._shards.get(name)
        if shard is None:
            path = self._path(name)
            if not (path / "edge_config.json").is_file():
                raise ValueError(f"Collection {name} not found")
            shard = self._shards[name] = edge.EdgeShard.load(str(path))
        return shard

    def close(self) -> None:
        shards, self._shards = self._shards, {}
        for shard in shards.values():
            shard.flush()
            shard.close()

    # collections
    def collection_exists(self, collection_name: str) -> bool:
        return (self._path(collection_name) / "edge_config.json").is_file()

    def collection_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "edge_config.json").is_file())

    def get_collection(self, collection_name: str) -> CollectionView:
        """The vector layout, from the config Qdrant Edge persists beside its segments (`edge_config.json`)."""
        path = self._path(collection_name)
        try:
            raw = json.loads((path / "edge_config.json").read_text())
        except FileNotFoundError:
            raise ValueError(f"Collection {collection_name} not found") from None
        vectors = {
            name: models.VectorParams(size=v["size"], distance=_DISTANCE_NAMES[v["distance"]])
            for name, v in (raw.get("vectors") or {}).items()
        }
        sparse = {
            name: models.SparseVectorParams(modifier=models.Modifier.IDF if s.get("modifier") == "idf" else None)
            for name, s in (raw.get("sparse_vectors") or {}).items()
        }
        unnamed = vectors.pop("", None) if set(vectors) == {""} else None
        params = models.CollectionParams(vectors=unnamed or vectors, sparse_vectors=sparse or None)
        return CollectionView(config=_Config(params=params))

    def create_collection(
        self,
        collection_name: str,
        vectors_config: models.VectorParams | dict[str, models.VectorParams],
        sparse_vectors_config: dict[str, models.SparseVectorParams] | None = None,
        hnsw_config: models.HnswConfigDiff | None = None,  # a server's (Roo Code's); the embedded store builds none
    ) -> bool:
        def dense(v: models.VectorParams) -> Any:
            if v.multivector_config is not None or v.datatype not in (None, models.Datatype.FLOAT32):
                raise _unsupported(v)
            return edge.EdgeVectorParams(size=v.size, distance=_DISTANCES[v.distance], memory=VECTOR_MEMORY)

        vectors = (
            {name: dense(v) for name, v in vectors_config.items()}
            if isinstance(vectors_config, dict)
            else dense(vectors_config)
        )
        sparse = {
            name: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf if s.modifier == models.Modifier.IDF else None)
            for name, s in (sparse_vectors_config or {}).items()
        }
        config = edge.EdgeConfig(
            vectors=vectors,
            sparse_vectors=sparse or None,
            optimizers=edge.EdgeOptimizersConfig(indexing_threshold=self.indexing_threshold_kb),
            hnsw_config=None if self.hnsw is None else edge.HnswIndexConfig(*self.hnsw, full_scan_threshold=10_000),
        )
        path = self._path(collection_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._shards[collection_name] = edge.EdgeShard.create(str(path), config)
        return True

    def delete_collection(self, collection_name: str) -> bool:
        shard = self._shards.pop(collection_name, None)
        if shard is not None:
            shard.close()
        path = self._path(collection_name)
        if not path.exists():
            return False
        shutil.rmtree(path)
        return True

    def create_payload_index(
        self, collection_name: str, field_name: str, field_schema: models.PayloadSchemaType, wait: bool = True
    ) -> None:
        if field_schema not in _SCHEMAS:
            raise _unsupported(field_schema)
        self._shard(collection_name).update(edge.UpdateOperation.create_field_index(field_name, _SCHEMAS[field_schema]))

    def optimize(self, collection_name: str) -> bool:
        """Qdrant's optimizers, run now (Qdrant Edge has no background ones): vacuums deleted points and merges
        small segments; True when anything changed."""
        return self._shard(collection_name).optimize()

    # points
    def upsert(self, collection_name: str, points: list[models.PointStruct], wait: bool = True) -> None:
        converted = [edge.Point(p.id, to_vector(p.vector), p.payload) for p in points]
        self._shard(collection_name).update(edge.UpdateOperation.upsert_points(converted))

    def set_payload(self, collection_name: str, payload: dict, points: list[str | int], wait: bool = True) -> None:
        self._shard(collection_name).update(edge.UpdateOperation.set_payload(list(points), payload))

    def delete(self, collection_name: str, points_selector: Any, wait: bool = True) -> None:
        if isinstance(points_selector, models.FilterSelector):
            op = edge.UpdateOperation.delete_points_by_filter(to_filter(points_selector.filter))
        elif isinstance(points_selector, models.PointIdsList):
            op = edge.UpdateOperation.delete_points(list(points_selector.points))
        else:
            raise _unsupported(points_selector)
        self._shard(collection_name).update(op)

    def retrieve(
        self, collection_name: str, ids: list[str | int], with_payload: bool = True, with_vectors: bool = False
    ) -> list[models.Record]:
        got = self._shard(collection_name).retrieve(list(ids), _with_payload(with_payload), bool(with_vectors))
        return [_record(r) for r in got]

    def scroll(
        self,
        collection_name: str,
        scroll_filter: models.Filter | None = None,
        limit: int = 10,
        offset: str | int | None = None,
        with_payload: bool = True,
        with_vectors: bool = False,
    ) -> tuple[list[models.Record], str | int | None]:
        request = edge.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=to_filter(scroll_filter),
            with_payload=_with_payload(with_payload),
            with_vector=bool(with_vectors),
        )
        records, next_offset = self._shard(collection_name).scroll(request)
        return [_record(r) for r in records], None if next_offset is None else point_id(next_offset)

    def count(self, collection_name: str, count_filter: models.Filter | None = None, exact: bool = True) -> Any:
        n = self._shard(collection_name).count(edge.CountRequest(exact=exact, filter=to_filter(count_filter)))
        return models.CountResult(count=n)

    def query_points(
        self,
        collection_name: str,
        query: Any = None,
        using: str | None = None,
        prefetch: list[models.Prefetch] | None = None,
        query_filter: models.Filter | None = None,
        search_params: models.SearchParams | None = None,
        limit: int = 10,
        with_payload: bool = True,
    ) -> QueryResponse:
        if prefetch:
            request = edge.QueryRequest(
                limit=limit,
                query=_fusion(query),
                prefetches=[_prefetch(p) for p in prefetch],
                filter=to_filter(query_filter),
                with_payload=_with_payload(with_payload),
            )
        else:
            request = edge.QueryRequest(
                limit=limit,
                query=_nearest(query, using),
                filter=to_filter(query_filter),
                params=_params(search_params),
                with_payload=_with_payload(with_payload),
            )
        found = self._shard(collection_name).query(request)
        return QueryResponse(
            points=[
                models.ScoredPoint(id=point_id(p.id), version=p.version, score=p.score, payload=p.payload)
                for p in found
            ]
        )
