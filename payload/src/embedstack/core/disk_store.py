"""The embedding cache's disk tier (embedding_cache.py holds the keys and the memory tier).

One SQLite file in WAL mode, `vectors.sqlite3` under the directory (0700, file
0600). Why SQLite: it is in the standard library and commits atomically, so a killed process or a full
disk leaves the last commit, never a half-written vector; rowids give the recency order (a hit in the
oldest quarter moves its row to the end, eviction deletes from the front, so freed pages are reused
whole) and a unique index finds keys. Each row carries its dimension and a blake2b checksum of key,
tokens and vector bytes; a row failing either is a miss and is deleted. A file that is not SQLite, holds
another schema or format, or that SQLite finds malformed is deleted and started afresh: never an
exception to a request, never a wrong vector. synchronous=OFF: a cache needs no fsync; a host crash may
cost the file (found damaged, discarded) but never serves a wrong vector. `max_disk_bytes` bounds the
database file plus its WAL: eviction keeps the used pages a reserve (a quarter, at most 64 MiB) below
it, transactions stay small and the WAL is truncated once past half the reserve. A disk hit is promoted
to memory. All SQLite work runs on one worker thread with one connection, reads before writes;
`put_many` only queues the writes (at most `_PENDING_CAP` bytes, oldest dropped first, and reads see
them), so the event loop never waits on the disk.

A stalled disk (a hung network volume) cannot hang a request or shutdown: a read that has not come back
within `_READ_DEADLINE` is a miss (counted in embedstack_cache_disk_read_timeouts_total), and no further
read is queued until the disk answers it; close() waits `_CLOSE_SECONDS` for queued writes, then drops
them with one log line. Corruption is recognised by SQLite's primary result code (the low 8 bits of the
extended code Python reports, https://www.sqlite.org/rescode.html), so SQLITE_CORRUPT_INDEX (779) and
the other SQLITE_CORRUPT_* codes start the file afresh like SQLITE_CORRUPT itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedstack.core.metrics import Metrics

# The cache's logger: its journal lines read as before the disk tier had its own module.
log = logging.getLogger("embedstack.embedding_cache")

_FILE = "vectors.sqlite3"
_FORMAT = "embedstack-embedding-cache-1"
# SQLite's default. A 1024-dimension row fills a page and spills the rest into a leaf (~90 % used); 384 and
# 768 dimensions fill ~77 %. Larger pages fit more rows without spilling but cost more WAL per changed row.
_PAGE_SIZE = 4096
# Bytes a disk row costs beyond vector and key: record header, cell pointer, its index entry's rowid.
_ROW_OVERHEAD = 64
# Writes queued for the disk and not yet committed, in bytes.
_PENDING_CAP = 64 << 20
# Disk hits whose rows are still to be moved to the recency end (a hint: the oldest are dropped).
_TOUCH_CAP = 16384
_READ_CHUNK = 500
_F32 = np.dtype("<f4")
# Primary result codes of a damaged file; sqlite3.Error.sqlite_errorcode is the extended code (e.g. 779,
# SQLITE_CORRUPT_INDEX), whose low 8 bits are the primary one.
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
# Seconds a disk read may take before its keys count as misses: a page-cache miss on a slow disk takes
# milliseconds, so this is a disk that stopped answering, and the engine is the faster way to the vector.
_READ_DEADLINE = 0.5
# Seconds close() waits for the disk to take what is queued for it.
_CLOSE_SECONDS = 5.0


# What both tiers hold; defined here, below the cache, which imports this module.
@dataclass(slots=True)
class CachedVector:
    vector: np.ndarray  # 1-D float32; read-only when it comes from the cache
    tokens: int  # what usage counts for this input


class _Unusable(Exception):
    """The file is not this cache's: another format or schema."""


class DiskStore:
    """The SQLite tier. Public methods run on the event loop; everything prefixed _w on the worker thread."""

    def __init__(self, directory: Path, max_bytes: int, metrics: Metrics) -> None:
        self.directory = directory
        self.path = directory / _FILE
        self.max_bytes = max_bytes
        # Room kept free for the WAL: it is truncated once past half of this, and a transaction adds at most a
        # quarter (its size adapts to that).
        self._reserve = min(max_bytes // 4, 64 << 20)
        self._target = max_bytes - self._reserve
        self._metrics = metrics
        self._cond = threading.Condition()
        self._reads: deque[tuple[list[bytes], asyncio.Future, asyncio.AbstractEventLoop]] = deque()
        self._writes: OrderedDict[bytes, CachedVector] = OrderedDict()  # queued for the disk; reads see them
        self._pending = 0
        self._closing = False
        self._stalled = False  # a read passed its deadline and has not come back (event loop side)
        self._read_timeouts = metrics.cache_disk_read_timeouts
        # worker-only state
        self._conn: sqlite3.Connection | None = None
        self._touches: deque[bytes] = deque(maxlen=_TOUCH_CAP)
        self._bad: list[bytes] = []
        self._next_id = 1
        self._page_size = _PAGE_SIZE
        self._batch_rows = 1  # rows per transaction: grows while its WAL is small
        self._wal = 0  # bytes in the WAL file
        self._thread = threading.Thread(target=self._w_run, name="embedstack-cache-disk", daemon=True)
        self._thread.start()

    # event loop side

    async def get_many(self, keys: list[bytes]) -> list[CachedVector | None]:
        with self._cond:
            queued = [self._writes.get(key) for key in keys]
            unread = [key for key, entry in zip(keys, queued, strict=True) if entry is None]
            if not unread or self._closing:
                return queued
            if self._stalled:  # the disk has not answered an earlier read: do not queue behind it
                self._read_timeouts.inc()
                return queued
            loop = asyncio.get_running_loop()
            future: asyncio.Future[list[CachedVector | None]] = loop.create_future()
            self._reads.append((unread, future, loop))
            self._cond.notify()
        try:
            read = iter(await asyncio.wait_for(asyncio.shield(future), _READ_DEADLINE))
        except TimeoutError:
            self._read_timeouts.inc()
            if not self._stalled:
                self._stalled = True
                future.add_done_callback(self._answered_again)
                log.warning(
                    "embedding cache %s: the disk did not answer a read within %g s; lookups are misses until it does",
                    self.path,
                    _READ_DEADLINE,
                )
            return queued
        return [entry if entry is not None else next(read) for entry in queued]

    def _answered_again(self, _: asyncio.Future) -> None:
        self._stalled = False
        log.info("embedding cache %s: the disk answers again", self.path)

    def put_many(self, entries: list[tuple[bytes, CachedVector]]) -> None:
        dropped = 0
        with self._cond:
            if self._closing:
                return
            for key, entry in entries:
                old = self._writes.pop(key, None)
                if old is not None:
                    self._pending -= old.vector.nbytes
                self._writes[key] = entry
                self._pending += entry.vector.nbytes
            while self._pending > _PENDING_CAP and len(self._writes) > 1:
                _, gone = self._writes.popitem(last=False)
                self._pending -= gone.vector.nbytes
                dropped += 1
            self._cond.notify()
        if dropped:
            log.warning("embedding cache: the disk falls behind; %d vectors not written to it", dropped)

    async def close(self) -> None:
        """Write what is queued, for at most _CLOSE_SECONDS: a stalled disk must not hold up a shutdown (a spot
        VM's preemption gives 30 s in all). What is not written by then is dropped; the file stays consistent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join, _CLOSE_SECONDS)
        if self._thread.is_alive():
            with self._cond:
                dropped = len(self._writes)
                self._writes.clear()
                self._pending = 0
            log.warning(
                "embedding cache %s: the disk did not finish within %g s of shutdown; %d vectors queued for it were "
                "not written",
                self.path,
                _CLOSE_SECONDS,
                dropped,
            )

    # worker thread

    def _w_run(self) -> None:
        self._w_open()
        while True:
            with self._cond:
                while not (self._reads or self._writes or self._touches or self._bad or self._closing):
                    self._cond.wait()
                read = self._reads.popleft() if self._reads else None
                batch: list[tuple[bytes, CachedVector]] = []
                if read is None:
                    room = max(0, self._batch_rows - min(len(self._touches), self._batch_rows // 2))
                    while self._writes and len(batch) < room:
                        batch.append(self._writes.popitem(last=False))
                        self._pending -= batch[-1][1].vector.nbytes
                    if not (batch or self._touches or self._bad) and self._closing:
                        break
            if read is not None:
                keys, future, loop = read
                result = self._w_guard(self._w_read, keys) or [None] * len(keys)
                with contextlib.suppress(RuntimeError):  # the loop is gone
                    loop.call_soon_threadsafe(_resolve, future, result)
            else:
                self._w_guard(self._w_write, batch)
        with self._cond:  # answer reads that raced with close
            while self._reads:
                keys, future, loop = self._reads.popleft()
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_resolve, future, [None] * len(keys))
        if self._conn is not None:
            self._w_guard(self._w_checkpoint)
            self._conn.close()
            self._conn = None

    def _w_guard(self, work, *args):
        """Run one unit of disk work; a failure costs misses or unwritten vectors, never the request."""
        if self._conn is None:
            self._touches.clear()
            self._bad.clear()
            return None
        try:
            return work(*args)
        except sqlite3.Error as e:
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            code = getattr(e, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _CORRUPT:
                log.warning("embedding cache %s is damaged (%s); starting it afresh", self.path, e)
                self._conn.close()
                self._conn = None
                self._w_remove()
                self._w_open()
            else:
                log.warning("embedding cache %s: %s", self.path, e)
        except Exception:
            log.exception("embedding cache %s failed", self.path)
        return None

    def _w_open(self) -> None:
        try:
            if not self.directory.exists():
                self.directory.mkdir(mode=0o700, parents=True)
                self.directory.chmod(0o700)
            if self._w_footprint() > self.max_bytes:
                log.info("embedding cache %s is larger than its bound now; starting it afresh", self.path)
                self._w_remove()
            try:
                self._conn = self._w_connect()
            except (sqlite3.DatabaseError, _Unusable) as e:
                log.warning("embedding cache %s is not usable (%s); starting it afresh", self.path, e)
                self._w_remove()
                self._conn = self._w_connect()
        except (OSError, sqlite3.Error, _Unusable) as e:
            log.error(
                "embedding cache directory %s is not usable (%s); keeping vectors in memory only", self.directory, e
            )
            self._conn = None
            return
        self._w_gauge()

    def _w_connect(self) -> sqlite3.Connection:
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # only takes effect on a new file
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the worker truncates the WAL itself
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                conn.executescript(
                    "BEGIN;"
                    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
                    "CREATE TABLE vectors (id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE,"
                    " tokens INTEGER NOT NULL, dim INTEGER NOT NULL, checksum BLOB NOT NULL, data BLOB NOT NULL);"
                    f"INSERT INTO meta VALUES ('format', '{_FORMAT}');"
                    "COMMIT;"
                )
            elif tables != {"meta", "vectors"}:
                raise _Unusable(f"tables {sorted(tables)}")
            else:
                row = conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
                if row is None or row[0] != _FORMAT:
                    raise _Unusable(f"format {row[0] if row else None!r}")
            self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            self._next_id = (conn.execute("SELECT max(id) FROM vectors").fetchone()[0] or 0) + 1
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._wal = self._w_wal()
            conn.text_factory = bytes  # a row whose vector turned into text is checked, not a decoding error
        except BaseException:
            conn.close()
            raise
        return conn

    def _w_remove(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def _w_footprint(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def _w_gauge(self) -> None:
        self._metrics.cache_bytes.labels(tier="disk").set(self._w_footprint())

    def _w_read(self, keys: list[bytes]) -> list[CachedVector | None]:
        assert self._conn is not None
        wanted = list(dict.fromkeys(keys))
        found: dict[bytes, CachedVector] = {}
        # A hit moves its row to the recency end only from the oldest quarter, where eviction comes next: a
        # move rewrites the row, and re-reading a whole cache after a restart should not rewrite all of it.
        oldest = self._conn.execute("SELECT min(id) FROM vectors").fetchone()[0] or 0
        stale = oldest + (self._next_id - oldest) // 4
        for start in range(0, len(wanted), _READ_CHUNK):
            chunk = wanted[start : start + _READ_CHUNK]
            rows = self._conn.execute(
                f"SELECT id, key, tokens, dim, checksum, data FROM vectors WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for row_id, key, tokens, dim, checksum, data in rows:
                if (
                    isinstance(data, bytes)
                    and isinstance(dim, int)
                    and isinstance(tokens, int)
                    and dim > 0
                    and tokens >= 0
                    and len(data) == dim * _F32.itemsize
                    and checksum == _checksum(key, tokens, data)
                ):
                    found[key] = CachedVector(np.frombuffer(data, dtype=_F32), tokens)
                    if row_id < stale:
                        self._touches.append(key)
                else:
                    log.warning("embedding cache: a damaged vector on disk; removing it")
                    self._bad.append(key)
        return [found.get(key) for key in keys]

    def _w_write(self, batch: list[tuple[bytes, CachedVector]]) -> None:
        conn = self._conn
        assert conn is not None
        touches = [self._touches.popleft() for _ in range(min(len(self._touches), self._batch_rows))]
        bad, self._bad = self._bad, []
        rows = []
        for key, entry in batch:
            data = entry.vector.astype(_F32, copy=False).tobytes()
            rows.append((key, entry.tokens, len(data) // _F32.itemsize, _checksum(key, entry.tokens, data), data))
        conn.execute("BEGIN IMMEDIATE")
        if bad:
            conn.executemany("DELETE FROM vectors WHERE key = ?", [(key,) for key in bad])
        if touches:
            conn.executemany("UPDATE vectors SET id = ? WHERE key = ?", [(self._w_id(), key) for key in touches])
        if rows:
            self._w_evict(sum(len(r[4]) + len(r[0]) + _ROW_OVERHEAD for r in rows))
            conn.executemany(
                "INSERT INTO vectors (id, key, tokens, dim, checksum, data) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET id = excluded.id, tokens = excluded.tokens, dim = excluded.dim,"
                " checksum = excluded.checksum, data = excluded.data",
                [(self._w_id(), *row) for row in rows],
            )
        self._w_evict(0)
        conn.execute("COMMIT")
        # The WAL stays within the reserve: halve the batch when one transaction came near a quarter of it, grow it
        # back when small, and truncate the WAL once past half.
        wal = self._w_wal()
        grown, self._wal = wal - self._wal, wal
        if grown > self._reserve // 4 and self._batch_rows > 1:
            self._batch_rows //= 2
        elif grown < self._reserve // 8 and self._batch_rows < 256:
            self._batch_rows *= 2
        if wal > self._reserve // 2:
            self._w_checkpoint()
        self._w_gauge()

    def _w_wal(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            return 0

    def _w_checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it."""
        assert self._conn is not None
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._wal = self._w_wal()

    def _w_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _w_evict(self, need: int) -> None:
        """Delete the least recently used rows until the used pages plus `need` bytes fit the target."""
        conn = self._conn
        assert conn is not None
        evicted = 0
        while True:
            pages = (
                conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
            )
            excess = pages * self._page_size + need - self._target
            if excess <= 0:
                break
            oldest = conn.execute("SELECT id, length(data) + length(key) FROM vectors ORDER BY id LIMIT 64").fetchall()
            if not oldest:
                break
            freed, last = 0, 0
            for row_id, size in oldest:
                freed += size + _ROW_OVERHEAD
                last = row_id
                evicted += 1
                if freed >= excess:
                    break
            conn.execute("DELETE FROM vectors WHERE id <= ?", (last,))
        if evicted:
            self._metrics.cache_evictions.labels(tier="disk").inc(evicted)


def _checksum(key: bytes, tokens: int, data: bytes) -> bytes:
    h = hashlib.blake2b(key, digest_size=16)
    h.update(tokens.to_bytes(8, "little"))
    h.update(data)
    return h.digest()


def _resolve(future: asyncio.Future, result: list[CachedVector | None]) -> None:
    if not future.done():
        future.set_result(result)
