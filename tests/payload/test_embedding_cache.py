"""The embedding cache on its own: keys, exact hits, both byte bounds under ten times their size, restarts,
damaged files, metrics, and an event loop that never waits on the disk."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from embedstack.config import load_settings
from embedstack.core.embedding_cache import ENTRY_OVERHEAD, CachedVector, EmbeddingCache, cache_key
from embedstack.core.metrics import Metrics

pytestmark = pytest.mark.fast

FILE = "vectors.sqlite3"


def entries(n: int, dim: int, seed: int = 0, start: int = 0) -> list[tuple[bytes, CachedVector]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    return [(cache_key(b"model", [start + i, 7]), CachedVector(vectors[i], 10 + i)) for i in range(n)]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def footprint(directory: Path) -> int:
    """The database and its WAL or journal (the -shm index is 32 KiB of shared memory, not data)."""
    total = 0
    for suffix in ("", "-wal", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            total += (directory / f"{FILE}{suffix}").stat().st_size
    return total


def same(a: CachedVector | None, b: CachedVector) -> bool:
    return (
        a is not None
        and a.tokens == b.tokens
        and a.vector.dtype == np.float32
        and a.vector.tobytes() == b.vector.tobytes()
    )


def test_keys_differ_for_any_change_of_fingerprint_or_content():
    fingerprints = [b"m@rev1|1024|mean|doc|trunc", b"m@rev2|1024|mean|doc|trunc", b"m@rev1|512|mean|doc|trunc", b""]
    contents = [[1, 2, 3], [1, 2, 4], [1, 2], [3, 2, 1], [], [0], "1 2 3", "", "\x01\x02\x03", "[1, 2, 3]"]
    keys = [cache_key(fp, content) for fp in fingerprints for content in contents]
    assert all(len(key) == 32 for key in keys)
    assert len(set(keys)) == len(keys)
    # length prefixes: a byte moved between fingerprint and text is another key
    assert cache_key(b"ab", "c") != cache_key(b"a", "bc")
    # ids are not their own bytes as text
    ids = [0x41424344]
    assert cache_key(b"m", ids) != cache_key(b"m", np.array(ids, "<i8").tobytes().decode("latin-1"))
    assert cache_key(b"m", [5, 6]) == cache_key(b"m", (5, 6)) == cache_key(b"m", np.array([5, 6]))
    assert cache_key(b"m", "\ud800 lone surrogate") != cache_key(b"m", "\ud801 lone surrogate")


def test_a_hit_returns_the_identical_bits_and_tokens_and_cannot_be_changed():
    metrics = Metrics()
    vector = np.array([0.1, -0.0, np.float32(1e-45), np.inf, 3.4e38], dtype=np.float32)
    vector = np.concatenate([vector, np.frombuffer(b"\x01\x00\xc0\x7f", dtype=np.float32)])  # a NaN with a payload
    original = vector.tobytes()
    key = cache_key(b"m", [1, 2])

    async def main():
        cache = EmbeddingCache(1 << 20, metrics)
        assert await cache.get_many([key]) == [None]
        await cache.put_many([(key, CachedVector(vector, 2))])
        vector[0] = 42  # the caller's array is not the cache's
        (hit,) = await cache.get_many([key])
        return hit

    hit = asyncio.run(main())
    assert hit.vector.tobytes() == original and hit.tokens == 2
    assert not hit.vector.flags.writeable
    assert (
        sample(metrics, "embedstack_cache_hits_total", tier="memory"),
        sample(metrics, "embedstack_cache_misses_total"),
    ) == (1, 1)


def test_memory_stays_within_its_bound_under_ten_times_its_size():
    metrics = Metrics()
    dim, fits = 1024, 100
    bound = fits * (dim * 4 + ENTRY_OVERHEAD)
    workload = entries(10 * fits, dim)

    async def main():
        cache = EmbeddingCache(bound, metrics)
        peak = 0
        for start in range(0, len(workload), 37):
            await cache.put_many(workload[start : start + 37])
            peak = max(peak, cache.bytes)
        return cache, peak, await cache.get_many([key for key, _ in workload])

    cache, peak, found = asyncio.run(main())
    assert peak <= bound and len(cache) == fits
    assert all(same(f, e) for f, (_, e) in zip(found[-fits:], workload[-fits:], strict=True))  # the newest stay
    assert found[:-fits] == [None] * (9 * fits)
    assert sample(metrics, "embedstack_cache_evictions_total", tier="memory") == 9 * fits
    assert sample(metrics, "embedstack_cache_bytes", tier="memory") == cache.bytes <= bound


def test_lru_keeps_what_was_used(tmp_path):
    async def main():
        cache = EmbeddingCache(3 * (16 + ENTRY_OVERHEAD), Metrics())
        a, b, c, d = entries(4, 4)
        await cache.put_many([a, b, c])
        await cache.get_many([a[0]])
        await cache.put_many([d])
        return await cache.get_many([a[0], b[0], c[0], d[0]])

    assert [hit is not None for hit in asyncio.run(main())] == [True, False, True, True]


def test_the_disk_tier_survives_a_restart_and_promotes_hits(tmp_path):
    stored = entries(300, 384)
    keys = [key for key, _ in stored]

    async def first():
        cache = EmbeddingCache(1 << 20, Metrics(), tmp_path / "cache", 16 << 20)
        await cache.put_many(stored)
        await cache.close()

    async def second(metrics):
        cache = EmbeddingCache(8 << 20, metrics, tmp_path / "cache", 16 << 20)
        found = await cache.get_many([*keys, cache_key(b"model", "never stored")])
        again = await cache.get_many(keys)
        await cache.close()
        return found, again

    asyncio.run(first())
    metrics = Metrics()
    found, again = asyncio.run(second(metrics))
    assert all(same(f, e) for f, (_, e) in zip(found[:-1], stored, strict=True)) and found[-1] is None
    assert all(same(f, e) for f, (_, e) in zip(again, stored, strict=True))
    assert sample(metrics, "embedstack_cache_hits_total", tier="disk") == 300
    assert sample(metrics, "embedstack_cache_hits_total", tier="memory") == 300  # promoted
    assert sample(metrics, "embedstack_cache_misses_total") == 1
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "cache" / FILE).stat().st_mode & 0o777 == 0o600


def test_the_disk_stays_within_its_bound_under_ten_times_its_size(tmp_path):
    metrics = Metrics()
    bound, dim = 1 << 20, 1024
    workload = entries(10 * bound // (dim * 4), dim)
    directory = tmp_path / "cache"

    async def main():
        cache = EmbeddingCache(256 << 10, metrics, directory, bound)
        sizes = [0]

        async def watch():
            while True:
                sizes.append(footprint(directory))
                await asyncio.sleep(0.0005)

        watcher = asyncio.create_task(watch())
        for start in range(0, len(workload), 256):
            await cache.put_many(workload[start : start + 256])
            await asyncio.sleep(0.002)
        await cache.close()  # writes what is still queued
        watcher.cancel()
        return max(sizes)

    peak = asyncio.run(main())
    assert peak <= bound and footprint(directory) <= bound
    evicted = sample(metrics, "embedstack_cache_evictions_total", tier="disk")
    with sqlite3.connect(directory / FILE) as db:
        (kept,) = db.execute("SELECT count(*) FROM vectors").fetchone()
    assert kept >= 0.5 * bound // (dim * 4)  # the bound is used, not wasted
    assert evicted + kept == len(workload)

    async def restarted():
        cache = EmbeddingCache(8 << 20, Metrics(), directory, bound)
        found = await cache.get_many([key for key, _ in workload[-kept:]])
        await cache.close()
        return found

    assert all(same(f, e) for f, (_, e) in zip(asyncio.run(restarted()), workload[-kept:], strict=True))


def test_a_disk_hit_saves_an_old_vector_from_eviction(tmp_path):
    bound = 1 << 20
    kept, others, later = entries(10, 1024), entries(100, 1024, start=100), entries(100, 1024, start=200)
    run_on(tmp_path, lambda cache: cache.put_many(kept + others), bound)
    assert all(run_on(tmp_path, lambda cache: cache.get_many([key for key, _ in kept]), bound))  # read after a restart
    run_on(tmp_path, lambda cache: cache.put_many(later), bound)
    found = run_on(tmp_path, lambda cache: cache.get_many([key for key, _ in kept + others[:10]]), bound)
    assert all(same(f, e) for f, (_, e) in zip(found[:10], kept, strict=True))
    assert found[10:] == [None] * 10  # as old, but not read: evicted


def run_on(directory: Path, work, max_disk_bytes: int = 8 << 20):
    async def main():
        cache = EmbeddingCache(8 << 20, Metrics(), directory, max_disk_bytes)
        try:
            return await work(cache)
        finally:
            await cache.close()

    return asyncio.run(main())


def test_a_damaged_row_is_a_miss_and_is_removed(tmp_path):
    stored = entries(20, 64)
    run_on(tmp_path, lambda cache: cache.put_many(stored))
    with sqlite3.connect(tmp_path / FILE) as db:
        db.execute(
            "UPDATE vectors SET data = substr(data, 1, 128) || x'00000000' || substr(data, 133) WHERE key = ?",
            (stored[0][0],),
        )  # a flipped value
        db.execute("UPDATE vectors SET data = substr(data, 1, 100) WHERE key = ?", (stored[1][0],))  # truncated
        db.execute("UPDATE vectors SET dim = 32 WHERE key = ?", (stored[2][0],))  # another dimension
        db.execute("UPDATE vectors SET tokens = 999 WHERE key = ?", (stored[3][0],))
    found = run_on(tmp_path, lambda cache: cache.get_many([key for key, _ in stored]))
    assert found[:4] == [None] * 4
    assert all(same(f, e) for f, (_, e) in zip(found[4:], stored[4:], strict=True))
    with sqlite3.connect(tmp_path / FILE) as db:
        assert db.execute("SELECT count(*) FROM vectors").fetchone() == (16,)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "other_format", "empty"])
def test_a_damaged_or_foreign_file_is_a_miss_never_an_error(tmp_path, damage):
    stored = entries(200, 256)
    run_on(tmp_path, lambda cache: cache.put_many(stored))
    path = tmp_path / FILE
    if damage == "garbage":
        path.write_bytes(b"not a database at all" * 1000)
    elif damage == "truncated":
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size // 2)
    elif damage == "foreign":
        path.unlink()
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE vectors (key BLOB, data BLOB)")
    elif damage == "other_format":
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = 'embedstack-embedding-cache-0'")
    else:
        path.write_bytes(b"")

    async def work(cache):
        found = await cache.get_many([key for key, _ in stored])
        await cache.put_many(stored[:5])
        return found, await cache.get_many([key for key, _ in stored[:5]])

    found, refilled = run_on(tmp_path, work)
    assert all(f is None or same(f, e) for f, (_, e) in zip(found, stored, strict=True))  # never a wrong vector
    if damage != "truncated":
        assert found == [None] * len(stored)
    assert all(same(f, e) for f, (_, e) in zip(refilled, stored[:5], strict=True))
    again = run_on(tmp_path, lambda cache: cache.get_many([key for key, _ in stored[:5]]))
    assert all(same(f, e) for f, (_, e) in zip(again, stored[:5], strict=True))  # the disk works again


def test_metrics_render_hits_misses_evictions_and_bytes(tmp_path):
    metrics = Metrics()
    stored = entries(3, 8)

    async def main():
        cache = EmbeddingCache(2 * (32 + ENTRY_OVERHEAD), metrics, tmp_path, 4 << 20)
        await cache.put_many(stored)
        await cache.get_many([key for key, _ in stored] + [b"x" * 32])
        await cache.close()

    asyncio.run(main())
    text = metrics.render().decode()
    for line in (
        'embedstack_cache_hits_total{tier="memory"} 2.0',
        'embedstack_cache_hits_total{tier="disk"} 1.0',
        "embedstack_cache_misses_total 1.0",
        'embedstack_cache_evictions_total{tier="memory"} 2.0',  # one by the put, one by the promotion
        f'embedstack_cache_bytes{{tier="memory"}} {2.0 * (32 + ENTRY_OVERHEAD)}',
    ):
        assert line in text.splitlines(), line
    assert 'embedstack_cache_bytes{tier="disk"}' in text


def test_many_coroutines_at_once(tmp_path):
    async def main():
        cache = EmbeddingCache(64 * (64 + ENTRY_OVERHEAD), Metrics(), tmp_path, 4 << 20)

        async def client(n):
            mine = entries(20, 16, seed=n, start=1000 * n)
            for key, entry in mine:
                await cache.put_many([(key, entry)])
                (hit,) = await cache.get_many([key])
                assert hit is None or same(hit, entry)
            return mine

        written = await asyncio.gather(*(client(n) for n in range(40)))
        everything = [pair for mine in written for pair in mine]
        found = await cache.get_many([key for key, _ in everything])
        await cache.close()
        return cache, everything, found

    cache, everything, found = asyncio.run(main())
    assert cache.bytes == len(cache) * (64 + ENTRY_OVERHEAD) <= cache.max_bytes
    assert all(same(f, e) for f, (_, e) in zip(found, everything, strict=True))  # memory or disk, all there


def test_the_event_loop_never_waits_on_the_disk(tmp_path):
    workload = entries(5000, 1024)
    keys = [key for key, _ in workload]

    async def ticker(lags: list[float], stop: asyncio.Event):
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - started - 0.001)

    async def measured(work):
        gc.collect()  # the garbage of building the workload is not the cache's pause
        lags: list[float] = []
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(lags, stop))
        await asyncio.sleep(0.005)
        result = await work()
        stop.set()
        await tick
        return max(lags), result

    async def main():
        cache = EmbeddingCache(64 << 20, Metrics(), tmp_path, 256 << 20)
        put_lag, _ = await measured(lambda: cache.put_many(workload))
        get_lag, found = await measured(lambda: cache.get_many(keys))
        close_lag, _ = await measured(cache.close)
        restarted = EmbeddingCache(64 << 20, Metrics(), tmp_path, 256 << 20)
        disk_lag, from_disk = await measured(lambda: restarted.get_many(keys))
        await restarted.close()
        return (put_lag, get_lag, close_lag, disk_lag), found, from_disk

    lags, found, from_disk = asyncio.run(main())
    print("max event-loop lag put/get/close/disk-get ms:", [round(lag * 1000, 1) for lag in lags])
    assert max(lags) < 0.05, lags
    assert all(same(f, e) for f, (_, e) in zip(found, workload, strict=True))
    assert all(same(f, e) for f, (_, e) in zip(from_disk, workload, strict=True))


def test_from_settings(tmp_path):
    metrics = Metrics()
    assert EmbeddingCache.from_settings(load_settings(env={"EMBEDSTACK_CACHE_BYTES": "0"}), metrics) is None
    memory_only = EmbeddingCache.from_settings(load_settings(env={}), metrics)
    assert memory_only is not None and memory_only.max_bytes == 256 << 20 and memory_only._disk is None
    env = {"EMBEDSTACK_CACHE_DIR": str(tmp_path / "c"), "EMBEDSTACK_CACHE_DISK_BYTES": str(8 << 20)}
    on_disk = EmbeddingCache.from_settings(load_settings(env=env), metrics)
    assert on_disk is not None and on_disk._disk is not None and on_disk._disk.max_bytes == 8 << 20
    asyncio.run(on_disk.close())
    assert (tmp_path / "c" / FILE).exists()


def test_a_stalled_disk_costs_a_request_a_bounded_wait_and_shutdown_does_not_wait_on_it(tmp_path, monkeypatch, caplog):
    """The disk stops answering (a hung network disk, a full queue in the kernel): reads block. A request's
    lookup turns into misses after the read deadline, lookups after it do not wait at all while the disk is
    stalled, /metrics counts the timeouts, and close() returns in bounded time, dropping what is unwritten."""
    from embedstack.core import disk_store

    stored = entries(20, 64)
    run_on(tmp_path, lambda cache: cache.put_many(stored))
    disk = threading.Event()
    real_read = disk_store.DiskStore._w_read

    def stalled_read(self, keys):
        disk.wait()  # the disk never answers until the test lets it
        return real_read(self, keys)

    monkeypatch.setattr(disk_store.DiskStore, "_w_read", stalled_read)
    monkeypatch.setattr(disk_store, "_CLOSE_SECONDS", 1.0, raising=False)  # close_wait checks it took
    metrics = Metrics()

    async def timed(work):
        started = time.monotonic()
        result = await asyncio.wait_for(work, 10)  # the old code waits forever
        return time.monotonic() - started, result

    async def main():
        cache = EmbeddingCache(8 << 20, metrics, tmp_path, 8 << 20)
        first = await timed(cache.get_many([key for key, _ in stored[:10]]))
        second = await timed(cache.get_many([key for key, _ in stored[10:]]))
        await cache.put_many(entries(5, 64, start=500))  # queued for a disk that does not write
        closing = await timed(cache.close())
        return first, second, closing

    try:
        with caplog.at_level(logging.WARNING, logger="embedstack.embedding_cache"):
            (first_wait, first), (second_wait, second), (close_wait, _) = asyncio.run(main())
    finally:
        disk.set()  # let the worker thread finish
    assert first == [None] * 10 and second == [None] * 10
    assert first_wait < 2.0, first_wait
    assert second_wait < 0.1, second_wait  # no second wait on a disk known to be stalled
    assert close_wait < 2.0, close_wait
    assert sample(metrics, "embedstack_cache_misses_total") == 20
    assert sample(metrics, "embedstack_cache_disk_read_timeouts_total") == 2
    dropped = [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    assert len(dropped) == 1, dropped


def hide_rows_from_the_key_index(path: Path, rows: list[tuple[int, bytes, CachedVector]]) -> None:
    """Add rows to the table behind the back of its unique key index, as a torn write or a bad sector can leave
    it. SQLite then reports SQLITE_CORRUPT_INDEX (779, an extended code of SQLITE_CORRUPT) when it deletes them."""
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("PRAGMA writable_schema=ON")
        table_sql, index_root = db.execute(
            "SELECT t.sql, i.rootpage FROM sqlite_master t, sqlite_master i"
            " WHERE t.name = 'vectors' AND i.name = 'sqlite_autoindex_vectors_1'"
        ).fetchone()
        db.execute("UPDATE sqlite_master SET sql = replace(sql, 'NOT NULL UNIQUE', 'NOT NULL') WHERE name = 'vectors'")
        db.execute("DELETE FROM sqlite_master WHERE name = 'sqlite_autoindex_vectors_1'")
    with sqlite3.connect(path, isolation_level=None) as db:
        db.executemany(
            "INSERT INTO vectors (id, key, tokens, dim, checksum, data) VALUES (?, ?, ?, ?, ?, ?)",
            [(row_id, key, e.tokens, e.vector.size, b"x" * 16, e.vector.tobytes()) for row_id, key, e in rows],
        )
        db.execute("PRAGMA writable_schema=ON")
        db.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'vectors'", (table_sql,))
        db.execute(
            "INSERT INTO sqlite_master VALUES ('index', 'sqlite_autoindex_vectors_1', 'vectors', ?, NULL)",
            (index_root,),
        )


def test_a_damaged_index_is_found_by_its_extended_code_and_the_file_started_afresh(tmp_path):
    bound = 1 << 20
    old = entries(200, 1024)  # more than the bound: the file is full, every later write evicts
    run_on(tmp_path, lambda cache: cache.put_many(old), bound)
    hide_rows_from_the_key_index(tmp_path / FILE, [(-i, b"h" * 31 + bytes([i]), old[0][1]) for i in range(1, 6)])
    with sqlite3.connect(tmp_path / FILE) as db, pytest.raises(sqlite3.DatabaseError) as caught:
        db.execute("DELETE FROM vectors WHERE id < 0")
    assert caught.value.sqlite_errorcode == 779  # SQLITE_CORRUPT_INDEX, not SQLITE_CORRUPT (11) itself

    new = entries(60, 1024, seed=1, start=1000)

    async def write_one_by_one(cache):
        for pair in new:
            await cache.put_many([pair])
            await asyncio.sleep(0.005)

    run_on(tmp_path, write_one_by_one, bound)
    found = run_on(tmp_path, lambda cache: cache.get_many([key for key, _ in new[-20:]]), bound)
    # the damaged file was discarded and the new vectors written; before, every eviction failed and none was
    assert all(same(f, e) for f, (_, e) in zip(found, new[-20:], strict=True))
