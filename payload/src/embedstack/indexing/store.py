"""Qdrant: an embedded one (Qdrant Edge, edge.py) or a deployed one (qdrant-client), in Roo Code's schema.

Roo Code's collection, from RooCodeInc/Roo-Code src/services/code-index/vector-store/qdrant-client.ts:
- name `ws-` + the first 16 hex digits of sha256(workspace path);
- one unnamed vector: size = the model's dimension, Cosine, on_disk; HNSW m=64, ef_construct=512, on_disk;
- keyword payload indexes on `type` and `pathSegments.0` … `pathSegments.4`;
- points: payload `filePath` (relative to the workspace), `codeChunk`, `startLine`, `endLine`,
  `segmentHash`, and `pathSegments` {"0": first segment, "1": …}; id uuid5(segmentHash, namespace);
- a point with `type: "metadata"` is bookkeeping: searches exclude it (`must_not type == metadata`).

embedstack adds, in the same collection: `fileHash` and `indexRoot` on every chunk; one bookkeeping
point per indexed file (`type: "metadata"`, `indexedFile`, `fileHash`), written only after the file's
chunks are in, so an interrupted run is finished by the next one; and, in the collections it creates,
a named sparse vector `text` (sparse.py) beside the unnamed dense one, for hybrid search. Roo Code
ignores all of them and reads such a collection as its own. The embedded store also indexes `filePath` and
`indexRoot`, which every re-indexed file's delete filters on.

The embedded store is one directory (default $XDG_DATA_HOME/embedstack/qdrant): `edge/<collection>/` holds the
Qdrant Edge shards, `embedstack.lock` the process that has it open. One process at a time: a second one gets a
ConfigError naming the first's pid. A directory of qdrant-client's local mode (embedstack's embedded store
before Qdrant Edge) is moved over on its first open (local_mode.py).
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from embedstack.errors import ConfigError
from embedstack.indexing.edge import EdgeCollections
from embedstack.indexing.sparse import SPARSE_NAME

# Roo Code's QDRANT_CODE_BLOCK_NAMESPACE (src/services/code-index/constants/index.ts)
POINT_NAMESPACE = uuid.UUID("f47ac10b-58cc-4372-a567-0e02b2c3d479")
INDEXED_PATH_SEGMENTS = 5
ROO_INDEXES = ["type", *(f"pathSegments.{i}" for i in range(INDEXED_PATH_SEGMENTS))]
EMBEDDED_INDEXES = [*ROO_INDEXES, "filePath", "indexRoot"]
PENDING = "pending"
EDGE_DIR = "edge"
LOCK_FILE = "embedstack.lock"
LOCAL_MODE_LOCK = ".lock"  # qdrant-client's local mode locks this one (qdrant_client/local/qdrant_local.py)


def roo_collection_name(workspace: str) -> str:
    """Roo Code's collection for a workspace folder: hashed as the path string VS Code gives it."""
    return "ws-" + hashlib.sha256(workspace.encode()).hexdigest()[:16]


def default_qdrant_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "embedstack" / "qdrant"


def path_segments(file_path: str) -> dict[str, str]:
    return {str(i): s for i, s in enumerate(p for p in file_path.split("/") if p)}


def path_filter(prefix: str | None) -> list[models.FieldCondition]:
    """Roo Code's directory filter: every segment of the prefix must match, in place."""
    if not prefix:
        return []
    cleaned = prefix.replace("\\", "/").strip()
    cleaned = cleaned[2:] if cleaned.startswith("./") else cleaned
    segments = [s for s in cleaned.split("/") if s and s != "."]
    return [
        models.FieldCondition(key=f"pathSegments.{i}", match=models.MatchValue(value=s)) for i, s in enumerate(segments)
    ]


NOT_METADATA = models.FieldCondition(key="type", match=models.MatchValue(value="metadata"))


def marker_id(root_key: str, file_path: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"embedstack-file\0{root_key}\0{file_path}"))


@dataclass(frozen=True, slots=True)
class QdrantTarget:
    url: str | None = None
    api_key: str | None = None
    ca: str | None = None
    path: Path | None = None

    @property
    def store_path(self) -> Path:
        return self.path or default_qdrant_path()

    def describe(self) -> str:
        return f"Qdrant at {self.url}" if self.url else f"the embedded Qdrant in {self.store_path}"


class EmbeddedQdrant(EdgeCollections):
    """The embedded store's collections, with the locks that keep other processes out until close()."""

    def __init__(self, path: Path, locks: list):
        super().__init__(path / EDGE_DIR)
        self.path = path
        self._locks = locks

    def close(self) -> None:
        try:
            super().close()
        finally:
            locks, self._locks = self._locks, []
            for handle in locks:
                handle.close()  # closing the descriptor releases its flock


def _lock(root: Path, name: str, *, mark: bool):
    """An exclusive lock on root/name, held while the returned file is open; `mark` writes our pid in it."""
    import portalocker

    handle = open(root / name, "a+")  # noqa: SIM115 (held open for as long as the store is)
    try:
        portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
    except portalocker.exceptions.LockException:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise ConfigError(
            f"the embedded Qdrant in {root} is in use by another process{who}: "
            "wait for it, or use another --qdrant-path"
        ) from None
    if mark:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return handle


def open_embedded(path: Path, log=None) -> EmbeddedQdrant:
    """The embedded store in `path`, locked for this process; a local-mode store there is moved over first."""
    from embedstack.indexing.local_mode import is_local_mode, migrate

    path.mkdir(parents=True, exist_ok=True)
    locks = [_lock(path, LOCK_FILE, mark=True)]
    try:
        if is_local_mode(path):
            migrate(path, path / EDGE_DIR, EMBEDDED_INDEXES, log)
        locks.append(_lock(path, LOCAL_MODE_LOCK, mark=False))  # keeps an older embedstack out too
    except BaseException:
        for handle in locks:
            handle.close()
        raise
    return EmbeddedQdrant(path, locks)


def is_embedded(client) -> bool:
    return getattr(client, "embedded", False)


def open_qdrant(target: QdrantTarget):
    """A deployed Qdrant's client that has answered once, or the embedded store; a ConfigError names what is
    wrong."""
    if target.url:
        kwargs = {"verify": target.ca} if target.ca else {}
        client = QdrantClient(
            url=target.url, api_key=target.api_key or None, check_compatibility=False, timeout=60, **kwargs
        )
        try:
            client.get_collections()
        except UnexpectedResponse as exc:
            if exc.status_code in (401, 403):
                raise ConfigError(f"{target.describe()} refused the API key ({exc.status_code})") from None
            raise ConfigError(f"{target.describe()} answered {exc.status_code}: {exc.reason_phrase}") from None
        except (ResponseHandlingException, httpx.HTTPError, OSError) as exc:
            cause = exc.source if isinstance(exc, ResponseHandlingException) else exc
            raise ConfigError(f"cannot reach {target.describe()}: {cause}") from None
        return client
    return open_embedded(target.store_path, log=lambda line: print(line, file=sys.stderr, flush=True))


def collection_dimension(client, name: str) -> int | None:
    """The dense vector size of an existing collection, None when there is none."""
    if not client.collection_exists(name):
        return None
    vectors = client.get_collection(name).config.params.vectors
    if isinstance(vectors, models.VectorParams):
        return vectors.size
    if isinstance(vectors, dict) and "" in vectors:
        return vectors[""].size
    return 0


def has_sparse(client, name: str) -> bool:
    """Whether the collection has embedstack's sparse vector (Roo Code's own collections do not)."""
    sparse = client.get_collection(name).config.params.sparse_vectors or {}
    return SPARSE_NAME in sparse


def ensure_collection(client, name: str, dimension: int, recreate: bool, where: str) -> bool:
    """Create the collection in Roo Code's schema; True when it was created. Another dimension is
    refused unless `recreate`, the only path that ever deletes a collection."""
    existing = collection_dimension(client, name)
    if existing is not None and existing != dimension:
        if not recreate:
            raise ConfigError(
                f"collection {name!r} in {where} holds {existing}-dimensional vectors, the model gives {dimension}; "
                "use another --collection, or --recreate to delete it and index again"
            )
        client.delete_collection(name)
        existing = None
    if existing is not None:
        return False
    client.create_collection(
        name,
        vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE, on_disk=True),
        hnsw_config=models.HnswConfigDiff(m=64, ef_construct=512, on_disk=True),
        # embedstack's own addition for hybrid search; Roo Code queries the unnamed dense vector only
        sparse_vectors_config={SPARSE_NAME: models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    for field_name in EMBEDDED_INDEXES if is_embedded(client) else ROO_INDEXES:
        with warnings.catch_warnings():  # qdrant-client's local mode (the quality bench's) filters without them
            warnings.simplefilter("ignore", UserWarning)
            client.create_payload_index(name, field_name=field_name, field_schema=models.PayloadSchemaType.KEYWORD)
    return True
