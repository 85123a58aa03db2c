"""Moving a store of qdrant-client's local mode (embedstack's embedded store before Qdrant Edge) into Qdrant Edge.

Local mode keeps `meta.json` (the collections' configs) and `collection/<name>/storage.sqlite` (pickled points)
in its directory (qdrant_client/local/qdrant_local.py, persistence.py). The first open of such a directory
copies every collection, points with their vectors and payloads, through qdrant-client itself into
`edge.migrating/`, checks the counts, renames it to `edge/` in one step, and only then moves the local-mode files
into `local-mode-backup/`, kept until the user deletes them. An interruption anywhere leaves the local-mode
store as it was, and the next open starts over.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

from qdrant_client import QdrantClient, models

from embedstack.errors import ConfigError
from embedstack.indexing.edge import EdgeCollections

META = "meta.json"
POINTS_DIR = "collection"
BACKUP = "local-mode-backup"
COPY_BATCH = 1024


def is_local_mode(root: Path) -> bool:
    return (root / META).is_file()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rebuild_hint(root: Path) -> str:
    return (
        f"rebuild it instead: move {root / META} and {root / POINTS_DIR} away, then run `embedstack index` "
        f"on the same paths with --qdrant-path {root}"
    )


def migrate(root: Path, edge_root: Path, payload_fields: list[str], log=None) -> list[tuple[str, int]]:
    """Copy every local-mode collection of `root` into Qdrant Edge shards under `edge_root`; (name, points) each.
    The caller holds the store's lock; qdrant-client takes its own `.lock` while it reads."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if edge_root.exists():
        raise ConfigError(
            f"{root} holds both a local-mode store ({META}, {POINTS_DIR}/) and a Qdrant Edge one ({edge_root.name}/); "
            f"move one of them elsewhere (the local-mode one is from an embedstack before Qdrant Edge)"
        )
    staging = edge_root.with_name(edge_root.name + ".migrating")
    shutil.rmtree(staging, ignore_errors=True)  # an interrupted copy: the local-mode store is intact
    try:
        old = QdrantClient(path=str(root))
    except RuntimeError as exc:  # portalocker: an embedstack before Qdrant Edge has it open
        raise ConfigError(f"the embedded Qdrant in {root} is in use by another process: {exc}") from None
    copied = []
    target = EdgeCollections(staging)
    try:
        for description in old.get_collections().collections:
            name = description.name
            params = old.get_collection(name).config.params
            total = old.count(name, exact=True).count
            log(
                f"embedstack: moving collection {name!r} ({total} points) from qdrant-client's local mode to "
                "Qdrant Edge"
            )
            try:
                target.create_collection(name, params.vectors, sparse_vectors_config=params.sparse_vectors)
            except TypeError as exc:
                raise ConfigError(f"cannot move collection {name!r} of {root}: {exc}; {_rebuild_hint(root)}") from None
            for field in payload_fields:
                target.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD)
            offset, moved = None, 0
            while True:
                with warnings.catch_warnings():  # local mode warns about its own size; it is being left
                    warnings.simplefilter("ignore", UserWarning)
                    records, offset = old.scroll(name, limit=COPY_BATCH, offset=offset, with_payload=True,
                                                 with_vectors=True)  # fmt: skip
                points = [models.PointStruct(id=r.id, vector=r.vector, payload=r.payload or {}) for r in records]
                if points:
                    target.upsert(name, points)
                moved += len(points)
                if offset is None:
                    break
            stored = target.count(name).count
            if stored != total:
                raise ConfigError(f"moving collection {name!r} of {root} stored {stored} of {total} points; "
                                  f"{_rebuild_hint(root)}")  # fmt: skip
            target.optimize(name)
            copied.append((name, stored))
    finally:
        target.close()
        old.close()
    staging.rename(edge_root)
    backup = root / BACKUP
    n = 1
    while backup.exists():  # an earlier migration's: kept
        n += 1
        backup = root / f"{BACKUP}-{n}"
    backup.mkdir()
    for item in (META, POINTS_DIR):
        if (root / item).exists():
            (root / item).rename(backup / item)
    log(
        f"embedstack: the old local-mode files are in {backup} ({_size(backup) / 1e6:.1f} MB); "
        "delete them once search works"
    )
    return copied
