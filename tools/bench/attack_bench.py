"""Attacks on a real `embedstack serve`, and what a legitimate keyed client sees meanwhile (issue 21).

One gateway with the bundled model and two keys: an attacker's and a legitimate client's. The
legitimate client embeds 4 code chunks at a time, one request after another; a second thread asks
/ready every 10 ms; a third samples the server's RSS. First a quiet phase, then each attack for
PHASE seconds, the attackers on loopback addresses of their own (127.0.2.x) as separate hosts
would be. As separate hosts, they and the observers also get CPUs of their own: the gateway runs
on the first half of this machine's CPUs, the attackers (a process of their own) and the observers
on the rest, in every phase, the quiet one included. --shared-cpus runs everything everywhere,
where the attackers' own work takes CPU from the gateway. Printed per phase: the legitimate
client's successes and p50/p99 latency (against the quiet phase), /ready's worst latency, the
server's peak RSS, and the 5xx answers the server counted.

Targets on this machine: 100 % 200s, p99 within 2x of quiet, /ready worst under 100 ms, RSS under
the unit's MemoryMax (3 GiB), no 5xx. A last phase drains a TLS gateway while TLS clients connect:
each must get a 503 over TLS, not a broken handshake.

    python tools/bench/attack_bench.py [--phase SECONDS] [--only NAME ...] [--shared-cpus]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import multiprocessing
import os
import re
import signal
import socket
import ssl
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson
from gateway_bench import READY_TIMEOUT, BenchGateway, load_chunks

MODEL = "all-minilm-l6-v2"
ATTACKER_KEY = "attacker-key-0123456789abcdef"
CLIENT_KEY = "legitimate-key-0123456789abcdef"
MEMORY_MAX_MIB = 3 * 1024  # roles/embedding_service: embedding_service_memory_max
MIB = 1 << 20


def request_head(path: str = "/v1/embeddings", key: str | None = ATTACKER_KEY, length: int | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gateway", "Content-Type: application/json"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Attack:
    """Runs an attacker coroutine factory until stopped; connections come from 127.0.2.x."""

    def __init__(self, port: int):
        self.port = port
        self.stop = asyncio.Event()
        self.sent = 0
        self._address = 0

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self._address = self._address % 50 + 1
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(f"127.0.2.{self._address}", 0))

    async def repeat(self, workers: int, once: Callable[[], Awaitable[None]]) -> None:
        async def worker() -> None:
            while not self.stop.is_set():
                with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
                    await once()
                    self.sent += 1
                await asyncio.sleep(0)

        await asyncio.gather(*(worker() for _ in range(workers)))

    async def post(self, body: bytes, key: str = ATTACKER_KEY) -> bytes:
        reader, writer = await self.connect()
        try:
            writer.write(request_head(key=key, length=len(body)) + body)
            await writer.drain()
            return await asyncio.wait_for(reader.read(4096), 30)
        finally:
            writer.close()

    async def hold_open(self, count: int, opening: Callable[[], bytes], trickle: float | None = None) -> None:
        """Keep `count` connections open that sent `opening` (then one byte every `trickle` s)."""

        async def one() -> None:
            while not self.stop.is_set():
                try:
                    reader, writer = await self.connect()
                    writer.write(opening())
                    await writer.drain()
                    self.sent += 1
                    while not self.stop.is_set() and not reader.at_eof():
                        if trickle is None:
                            await asyncio.wait_for(reader.read(4096), 1.0)
                        else:
                            await asyncio.sleep(trickle)
                            writer.write(b" ")
                            await writer.drain()
                except (OSError, TimeoutError, asyncio.IncompleteReadError):
                    await asyncio.sleep(0.05)
                    continue
                finally:
                    with contextlib.suppress(Exception):
                        writer.close()

        await asyncio.gather(*(one() for _ in range(count)))


def nested_open_lists(size: int) -> bytes:
    return b'{"model": "' + MODEL.encode() + b'", "input": "x", "pad": ' + b"[0" * (size // 2) + b"}"


async def quadratic_body(a: Attack) -> None:
    body = nested_open_lists(MIB)  # 1 MiB: minutes of the old scan
    await a.repeat(2, lambda: a.post(body))


async def lone_backslash_body(a: Attack) -> None:
    body = b'{"model": "' + MODEL.encode() + b'", "input": "x", "pad": "' + b'\\"' * (MIB // 2) + b"\\"
    await a.repeat(2, lambda: a.post(body))  # 1 MiB: hours of the old scan, every quote scanned to the end


async def endless_headers(a: Attack) -> None:
    async def once() -> None:
        _, writer = await a.connect()
        try:
            writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: gateway\r\nX-Pad: ")
            for _ in range(24 * 16):  # up to 24 MiB, no key
                writer.write(b"a" * 65536)
                await writer.drain()
        finally:
            writer.close()

    await a.repeat(4, once)


async def half_heads(a: Attack) -> None:
    await a.hold_open(1200, lambda: b"POST /v1/embeddings HTTP/1.1\r\nHost: gateway\r\nContent-Ty")


async def slot_hogging(a: Attack) -> None:
    await a.hold_open(128, lambda: request_head(length=100_000) + b"{")


async def body_slowloris(a: Attack) -> None:
    await a.hold_open(100, lambda: request_head(length=100_000) + b'{"model": "', trickle=0.5)


async def disconnects(a: Attack) -> None:
    body = orjson.dumps({"model": MODEL, "input": ["x" * 100_000]})

    async def once() -> None:
        _, writer = await a.connect()
        writer.write(request_head(length=len(body)) + body[:5000])
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.close()  # a reset, as a killed client's kernel sends

    await a.repeat(16, once)


async def large_bodies(a: Attack) -> None:
    body = b'{"model": "' + MODEL.encode() + b'", "input": "x", "pad": [' + b"[]," * (8 * MIB // 3 - 20) + b"[]]}"
    await a.repeat(12, lambda: a.post(body))


async def booking_flood(a: Attack) -> None:
    chunks = load_chunks(60)
    counter = iter(range(10**9))

    async def once() -> None:
        n = next(counter)
        await a.post(orjson.dumps({"model": MODEL, "input": [f"{n} {c}" for c in chunks]}))

    await a.repeat(200, once)


ATTACKS: dict[str, Callable[[Attack], Awaitable[None]]] = {
    "quadratic body ([0[0[0..., 1 MiB)": quadratic_body,
    'quadratic body ("\\"\\"..., 1 MiB, a lone backslash last)': lone_backslash_body,
    "headers that never end (24 MiB, no key)": endless_headers,
    "half a head, then silence (1,200 conns)": half_heads,
    "one key holds 128 uploads at 1 byte": slot_hogging,
    "uploads cut off mid-body (reset)": disconnects,
    "8 MiB bodies of empty lists, 12 at once": large_bodies,
    "body slowloris (100 conns, 2 bytes/s)": body_slowloris,
    "flood of distinct 60-chunk requests": booking_flood,
}


class Observer:
    """The legitimate client, the /ready poller and the RSS sampler, each in a thread of its own."""

    def __init__(self, gateway: BenchGateway, texts: list[str]):
        self.gateway = gateway
        self.texts = texts
        self.running = threading.Event()
        self.quit = threading.Event()
        self.reset()
        self._threads = [threading.Thread(target=t, daemon=True) for t in (self._client, self._ready, self._rss)]
        for thread in self._threads:
            thread.start()

    def reset(self) -> None:
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self.ready: list[float] = []
        self.rss_peak = 0.0

    def _client(self) -> None:
        with httpx.Client(
            base_url=self.gateway.url, timeout=120, headers={"Authorization": f"Bearer {CLIENT_KEY}"}
        ) as c:
            n = 0
            while not self.quit.is_set():
                if not self.running.wait(0.1):
                    continue
                n += 1
                body = {"model": MODEL, "input": [f"{n} {t}" for t in self.texts]}
                started = time.perf_counter()
                try:
                    status = c.post("/v1/embeddings", json=body).status_code
                except httpx.HTTPError:
                    status = 0
                self.latencies.append(time.perf_counter() - started)
                self.statuses.append(status)

    def _ready(self) -> None:
        with httpx.Client(base_url=self.gateway.url, timeout=30) as c:
            while not self.quit.is_set():
                if not self.running.wait(0.1):
                    continue
                started = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    c.get("/ready")
                self.ready.append(time.perf_counter() - started)
                time.sleep(0.01)

    def _rss(self) -> None:
        while not self.quit.is_set():
            if self.running.is_set():
                with contextlib.suppress(OSError, AttributeError):
                    self.rss_peak = max(self.rss_peak, self.gateway.rss_mib())
            time.sleep(0.05)

    def close(self) -> None:
        self.quit.set()
        for thread in self._threads:
            thread.join(timeout=150)


def server_errors(url: str) -> int:
    text = httpx.get(url + "/metrics", timeout=10).text
    return int(sum(float(v) for v in re.findall(r'embedstack_requests_total\{[^}]*status="5\d\d"\} ([\d.e+]+)', text)))


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def split_cpus(shared: bool) -> tuple[set[int] | None, set[int] | None]:
    """The gateway's CPUs and the bench's (attackers and observers): halves of this process's set."""
    cpus = sorted(os.sched_getaffinity(0))
    if shared or len(cpus) < 2:
        return None, None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def attack_process(name: str, port: int, seconds: float) -> int:
    """One attack for `seconds`, in a process of its own (its event loop must not take the observers' GIL);
    it inherits the bench's CPUs."""

    async def drive() -> int:
        a = Attack(port)
        task = asyncio.create_task(ATTACKS[name](a))
        await asyncio.sleep(seconds)
        a.stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 30)
        return a.sent

    return asyncio.run(drive())


def run_phase(name: str, observer: Observer, gateway: BenchGateway, attackers, seconds: float) -> dict:
    errors_before = server_errors(gateway.url)
    observer.reset()
    observer.running.set()
    sent = 0
    if attackers is None:
        time.sleep(seconds)
    else:
        sent = attackers.apply(attack_process, (name, gateway.port, seconds))
    observer.running.clear()
    time.sleep(0.3)
    ok = sum(s == 200 for s in observer.statuses)
    return {
        "phase": name,
        "sent": sent,
        "ok": ok,
        "requests": len(observer.statuses),
        "other": sorted({s for s in observer.statuses if s != 200}),
        "p50": percentile(observer.latencies, 50),
        "p99": percentile(observer.latencies, 99),
        "ready_worst": max(observer.ready, default=float("nan")),
        "rss_peak": observer.rss_peak,
        "server_5xx": server_errors(gateway.url) - errors_before,
    }


def tls_drain_phase(connections: int = 16) -> dict:
    """A TLS gateway gets SIGTERM while TLS clients keep connecting: each must get an HTTP answer over TLS."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(tempfile.mkdtemp(prefix="attack-bench-tls-"))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    env = {
        "EMBEDSTACK_API_KEYS": CLIENT_KEY,
        "EMBEDSTACK_TLS_CERT": str(folder / "cert.pem"),
        "EMBEDSTACK_TLS_KEY": str(folder / "key.pem"),
        "EMBEDSTACK_DRAIN_SECONDS": "1",
    }
    outcomes: dict[str, int] = {}
    context = ssl.create_default_context(cafile=str(folder / "cert.pem"))
    body = orjson.dumps({"model": MODEL, "input": ["def f(): pass"]})
    with BenchGateway("off", 0, extra_env=env) as gateway:
        gateway.url = gateway.url.replace("http://", "https://")
        wait_ready_tls(gateway, context)
        stop = threading.Event()

        def one() -> str:
            try:
                raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
                with raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(request_head(key=CLIENT_KEY, length=len(body)) + body)
                    answer = tls.recv(64)
                return answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "no answer"
            except ssl.SSLError as exc:
                return f"TLS error ({exc.reason})"
            except ConnectionRefusedError:
                return "refused (listener closed)"
            except OSError as exc:
                return type(exc).__name__

        def client() -> None:
            while not stop.is_set():
                outcome = one()
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

        clients = [threading.Thread(target=client) for _ in range(connections)]
        for thread in clients:
            thread.start()
        time.sleep(1.0)
        gateway.proc.send_signal(signal.SIGTERM)  # the drain starts while clients keep connecting
        gateway.proc.wait(30)
        time.sleep(0.5)
        stop.set()
        for thread in clients:
            thread.join()
    return outcomes


def wait_ready_tls(gateway: BenchGateway, context: ssl.SSLContext) -> None:
    started = time.monotonic()
    with httpx.Client(verify=context, timeout=5) as client:
        while time.monotonic() - started < READY_TIMEOUT:
            with contextlib.suppress(httpx.TransportError):
                if client.get(gateway.url + "/ready").status_code == 200:
                    return
            time.sleep(0.25)
    raise RuntimeError("the TLS gateway did not become ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=float, default=8.0, help="seconds per phase")
    parser.add_argument("--only", nargs="*", help="run the attacks whose names contain these words")
    parser.add_argument(
        "--shared-cpus", action="store_true", help="run the gateway, attackers and observers on every CPU alike"
    )
    args = parser.parse_args(argv)
    attacks = [n for n in ATTACKS if not args.only or any(w in n for w in args.only)]
    texts = load_chunks(4)
    gateway_cpus, bench_cpus = split_cpus(args.shared_cpus)
    env = {"EMBEDSTACK_API_KEYS": f"{ATTACKER_KEY},{CLIENT_KEY}"}
    if bench_cpus:
        os.sched_setaffinity(0, bench_cpus)  # the observers' threads, and the attackers' process after them
        print(f"gateway on CPUs {sorted(gateway_cpus)}; attackers and observers on {sorted(bench_cpus)}")
    with (
        BenchGateway("off", len(gateway_cpus or ()), extra_env=env, cpus=gateway_cpus) as gateway,
        multiprocessing.get_context("spawn").Pool(1) as attackers,
    ):
        gateway.wait_ready(READY_TIMEOUT)
        observer = Observer(gateway, texts)
        try:
            rows = [run_phase("quiet", observer, gateway, None, args.phase)]
            for name in attacks:
                rows.append(run_phase(name, observer, gateway, attackers, args.phase))
                print(f"  {name}: done", flush=True)
        finally:
            observer.close()
    quiet = rows[0]
    columns = "phase | attack requests | client 200s | client p50 / p99 | p99 vs quiet | /ready worst | peak RSS | 5xx"
    print(f"\n| {columns} |")
    print("|---|---|---|---|---|---|---|---|")
    failed = []
    for r in rows:
        ratio = r["p99"] / quiet["p99"]
        other = f" (+{r['other']})" if r["other"] else ""
        print(
            f"| {r['phase']} | {r['sent']} | {r['ok']}/{r['requests']}{other} | {r['p50'] * 1000:.0f} / "
            f"{r['p99'] * 1000:.0f} ms | {ratio:.2f}x | {r['ready_worst'] * 1000:.0f} ms | {r['rss_peak']:.0f} MiB | "
            f"{r['server_5xx']} |"
        )
        if (
            r["ok"] != r["requests"]
            or ratio > 2
            or r["ready_worst"] > 0.1
            or r["rss_peak"] > MEMORY_MAX_MIB
            or r["server_5xx"]
        ):
            failed.append(r["phase"])
    if not args.only or any("tls" in w for w in args.only):
        outcomes = tls_drain_phase()
        print(f"\nTLS clients connecting while a TLS gateway drains: {outcomes}")
        if any(k.startswith(("TLS error", "no answer")) for k in outcomes):
            failed.append("tls during drain")
    print(f"\ntargets missed: {', '.join(failed) if failed else 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
