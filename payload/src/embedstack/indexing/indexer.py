"""`embedstack index`: files → chunks → the endpoint → Qdrant, incrementally.

A run compares each file's sha256 with the one its bookkeeping point holds: an unchanged file is
skipped; a new or changed one is chunked, its chunks that are not in the collection yet are embedded
(identical texts once), upserted, the file's stale points deleted, and only then its bookkeeping
point written. Point ids are deterministic (uuid5 of the chunk's segmentHash, as Roo Code does), so a
run that was interrupted anywhere is finished by the next one with no duplicate and no orphan: a file
being worked on holds a `pending` marker until its points are in, and a marker whose file is gone
takes the file's points with it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from qdrant_client import models
from tqdm import tqdm

from embedstack.indexing.chunking import Chunk, Chunker
from embedstack.indexing.endpoint import Endpoint
from embedstack.indexing.files import SourceFile, list_files, read_files
from embedstack.indexing.sparse import SPARSE_NAME, document_vector
from embedstack.indexing.store import (
    PENDING,
    POINT_NAMESPACE,
    ensure_collection,
    has_sparse,
    is_embedded,
    marker_id,
    path_segments,
)

UPSERT_BATCH = 256
# Files are worked on in groups whose chunks fill the requests in flight this many times over.
GROUP_ROUNDS = 2


@dataclass
class Summary:
    files: int = 0
    changed_files: int = 0
    unchanged_files: int = 0
    deleted_files: int = 0
    chunks: int = 0
    deduplicated: int = 0
    reused: int = 0  # chunks of a changed file already in the collection
    embedded: int = 0
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        rate = self.embedded / self.seconds if self.seconds else 0.0
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return [
            f"files:        {self.files} ({self.changed_files} new or changed, {self.unchanged_files} unchanged "
            f"skipped, {self.deleted_files} deleted)",
            f"not indexed:  {skipped}",
            f"chunks:       {self.chunks} in changed files ({self.deduplicated} deduplicated, "
            f"{self.reused} already stored)",
            f"embedded:     {self.embedded} chunks in {self.seconds:.1f} s ({rate:.1f} chunks/s)",
        ]


@dataclass(frozen=True, slots=True)
class Planned:
    source: SourceFile
    chunks: list[Chunk]
    hashes: list[str]  # segmentHash per chunk
    ids: list[str]


def segment_hash(root_key: str, path: str, chunk: Chunk) -> str:
    raw = f"{root_key}\0{path}\0{chunk.start_line}\0{chunk.end_line}\0{chunk.text}"
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def index_root(paths: list[Path]) -> tuple[Path, list[str]]:
    """The directory file paths are relative to, and the scanned prefixes inside it ('' = all)."""
    resolved = [p.resolve() for p in paths]
    for p in resolved:
        if not p.exists():
            raise FileNotFoundError(p)
    dirs = [p if p.is_dir() else p.parent for p in resolved]
    root = Path(os.path.commonpath(dirs))
    prefixes = []
    for p in resolved:
        rel = p.relative_to(root).as_posix()
        prefixes.append("" if rel == "." else rel + ("/" if p.is_dir() else ""))
    return root, prefixes


def _in_scope(path: str, prefixes: list[str]) -> bool:
    return any(p == "" or path == p or (p.endswith("/") and path.startswith(p)) for p in prefixes)


class Indexer:
    def __init__(
        self,
        endpoint: Endpoint,
        client,  # a QdrantClient, or the embedded store (edge.py), which answers the same calls
        collection: str,
        *,
        where: str = "Qdrant",
        recreate: bool = False,
        progress: bool | None = None,  # None: a progress bar when stderr is a terminal
    ):
        self.endpoint = endpoint
        self.client = client
        self.collection = collection
        self.where = where
        self.recreate = recreate
        self.progress = progress

    def markers(self, root_key: str) -> dict[str, str]:
        found: dict[str, str] = {}
        offset = None
        flt = models.Filter(
            must=[
                models.FieldCondition(key="type", match=models.MatchValue(value="metadata")),
                models.FieldCondition(key="indexRoot", match=models.MatchValue(value=root_key)),
            ]
        )
        while True:
            points, offset = self.client.scroll(
                self.collection, scroll_filter=flt, limit=1024, offset=offset, with_payload=True
            )
            for p in points:
                if "indexedFile" in p.payload:
                    found[p.payload["indexedFile"]] = p.payload.get("fileHash", PENDING)
            if offset is None:
                return found

    def run(
        self,
        paths: list[Path],
        include: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> Summary:
        started = time.perf_counter()
        model = self.endpoint.model or self.endpoint.resolve()
        ensure_collection(self.client, self.collection, model.dimension, self.recreate, self.where)
        self.sparse = has_sparse(self.client, self.collection)
        self._unit = [1.0] + [0.0] * (model.dimension - 1)
        chunker = Chunker(model.max_tokens)

        root, prefixes = index_root(paths)
        root_key = str(root)
        names: list[str] = []
        for prefix in prefixes:
            if prefix and not prefix.endswith("/"):
                names.append(prefix)  # a file named on the command line
            else:
                names.extend(prefix + n for n in list_files(root / prefix, include or [], exclude or []))
        names = sorted(set(names))
        walk = read_files(root, names)
        summary = Summary(files=len(walk.files), skipped=walk.skipped)

        stored = {p: h for p, h in self.markers(root_key).items() if _in_scope(p, prefixes)}
        todo = [f for f in walk.files if stored.get(f.path) != f.sha256]
        summary.unchanged_files = len(walk.files) - len(todo)
        summary.changed_files = len(todo)
        present = {f.path for f in walk.files}
        gone = sorted(p for p in stored if p not in present)

        plans = []
        for f in todo:
            chunks = chunker.chunks(f.path, f.text)
            hashes = [segment_hash(root_key, f.path, c) for c in chunks]
            plans.append(Planned(f, chunks, hashes, [str(uuid.uuid5(POINT_NAMESPACE, h)) for h in hashes]))
        summary.chunks = sum(len(p.chunks) for p in plans)

        vectors: dict[str, np.ndarray] = {}  # sha256 of a chunk's text -> its vector, for this run
        bar = tqdm(
            total=summary.chunks,
            unit="chunk",
            desc="indexing",
            file=sys.stderr,
            disable=None if self.progress is None else not self.progress,
        )
        try:
            group: list[Planned] = []
            group_chunks = max(1, self.endpoint.batch_size * self.endpoint.parallel * GROUP_ROUNDS)
            for plan in plans:
                group.append(plan)
                if sum(len(p.chunks) for p in group) >= group_chunks:
                    self._index_group(group, root_key, vectors, summary, bar)
                    group = []
            if group:
                self._index_group(group, root_key, vectors, summary, bar)
        finally:
            bar.close()
        for path in gone:
            self._delete_file(root_key, path)
        summary.deleted_files = len(gone)
        if is_embedded(self.client):  # Qdrant Edge runs no optimizer of its own: vacuum what was replaced
            self.client.optimize(self.collection)
        summary.seconds = time.perf_counter() - started
        return summary

    def _index_group(
        self, group: list[Planned], root_key: str, vectors: dict[str, np.ndarray], summary: Summary, bar: tqdm
    ) -> None:
        # 1. every file of the group is pending until its points are in
        self._write_markers(root_key, [(p.source.path, PENDING) for p in group])
        # 2. which chunks need a vector: not stored already, text not embedded yet in this run
        all_ids = [i for p in group for i in p.ids]
        existing = set()
        for start in range(0, len(all_ids), 1024):
            got = self.client.retrieve(self.collection, ids=all_ids[start : start + 1024], with_payload=False)
            existing.update(str(r.id) for r in got)
        wanted: dict[str, str] = {}  # text hash -> text, in order
        for plan in group:
            for chunk, pid in zip(plan.chunks, plan.ids, strict=True):
                if pid in existing:
                    summary.reused += 1
                    bar.update(1)
                    continue
                key = hashlib.sha256(chunk.text.encode("utf-8", "surrogatepass")).hexdigest()
                if key in vectors or key in wanted:
                    summary.deduplicated += 1
                    bar.update(1)
                    continue
                wanted[key] = chunk.text
        texts = list(wanted.values())
        got_vectors = self.endpoint.embed_documents(texts, on_batch=bar.update)
        summary.embedded += len(texts)
        for key, vec in zip(wanted, got_vectors, strict=True):
            vectors[key] = np.asarray(vec, dtype=np.float32)
        # 3. per file: upsert its new points, delete its stale ones, then mark it done
        done = []
        for plan in group:
            points = []
            for chunk, pid, seg in zip(plan.chunks, plan.ids, plan.hashes, strict=True):
                if pid in existing:
                    continue
                key = hashlib.sha256(chunk.text.encode("utf-8", "surrogatepass")).hexdigest()
                dense = vectors[key].tolist()
                points.append(
                    models.PointStruct(
                        id=pid,
                        vector={"": dense, SPARSE_NAME: document_vector(chunk.text)} if self.sparse else dense,
                        payload={
                            "filePath": plan.source.path,
                            "codeChunk": chunk.text,
                            "startLine": chunk.start_line,
                            "endLine": chunk.end_line,
                            "segmentHash": seg,
                            "pathSegments": path_segments(plan.source.path),
                            "fileHash": plan.source.sha256,
                            "indexRoot": root_key,
                        },
                    )
                )
            for start in range(0, len(points), UPSERT_BATCH):
                self.client.upsert(self.collection, points=points[start : start + UPSERT_BATCH], wait=True)
            kept = [pid for pid in plan.ids if pid in existing]
            if kept:  # chunks the edit left as they were: stored already, now of the new file
                self.client.set_payload(
                    self.collection, payload={"fileHash": plan.source.sha256}, points=kept, wait=True
                )
            self._delete_file(root_key, plan.source.path, keep=plan.ids, keep_marker=True)
            done.append((plan.source.path, plan.source.sha256))
        self._write_markers(root_key, done)

    def _write_markers(self, root_key: str, items: list[tuple[str, str]]) -> None:
        points = [
            models.PointStruct(
                id=marker_id(root_key, path),
                vector={"": self._unit} if self.sparse else self._unit,
                payload={"type": "metadata", "indexedFile": path, "indexRoot": root_key, "fileHash": sha},
            )
            for path, sha in items
        ]
        for start in range(0, len(points), UPSERT_BATCH):
            self.client.upsert(self.collection, points=points[start : start + UPSERT_BATCH], wait=True)

    def _delete_file(self, root_key: str, path: str, keep: list[str] | None = None, keep_marker: bool = False) -> None:
        must_not: list = [models.HasIdCondition(has_id=keep)] if keep else []
        flt = models.Filter(
            must=[
                models.FieldCondition(key="filePath", match=models.MatchValue(value=path)),
                models.FieldCondition(key="indexRoot", match=models.MatchValue(value=root_key)),
            ],
            must_not=must_not,
        )
        self.client.delete(self.collection, points_selector=models.FilterSelector(filter=flt), wait=True)
        if not keep_marker:
            self.client.delete(
                self.collection, points_selector=models.PointIdsList(points=[marker_id(root_key, path)]), wait=True
            )
