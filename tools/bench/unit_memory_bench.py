"""Peak memory of the services whose units get a MemoryMax, measured the way the kernel would charge them.

Each process tree runs in a memory cgroup of its own, and the figure is the kernel's peak charge for it
(cgroup v2 memory.peak, or v1 memory.max_usage_in_bytes): anonymous memory, page cache and kernel
memory of the whole tree, which is what systemd's MemoryMax limits:
- vLLM's CPU build (`make vllm-venv`) serving the bundled model with the vllm role's defaults
  (VLLM_CPU_KVCACHE_SPACE=1 GiB), idle and after 2,000 embedding inputs;
- the preemption watcher (`embedstack preempt-watch`) polling a metadata stand-in for 10 s;
- the Qdrant snapshot uploader (roles/qdrant_snapshots) streaming a 256 MiB snapshot from a stand-in
  Qdrant to the Cloud Storage stand-in.
The roles' *_memory_max defaults are these figures with headroom; the GPU build's and Qdrant's own
footprint cannot be measured here (no GPU, no Qdrant binary) and is sized from the host instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v2, else the v1 memory controller (this machine's hybrid layout)
V2 = (CGROUP_ROOT / "cgroup.controllers").exists()
MEMORY_ROOT = CGROUP_ROOT if V2 else CGROUP_ROOT / "memory"
PEAK, CURRENT = ("memory.peak", "memory.current") if V2 else ("memory.max_usage_in_bytes", "memory.usage_in_bytes")


@contextlib.contextmanager
def cgroup(name: str) -> Iterator[Path]:
    """A memory cgroup for one measured process tree, removed afterwards."""
    path = MEMORY_ROOT / f"embedstack-bench-{name}-{os.getpid()}"
    path.mkdir()
    try:
        yield path
    finally:
        for _ in range(100):
            try:
                path.rmdir()
                break
            except OSError:  # a child still exiting
                time.sleep(0.1)


def enter(group: Path) -> None:
    (group / "cgroup.procs").write_text(str(os.getpid()))


def peak_mib(group: Path) -> float:
    return int((group / PEAK).read_text()) / 2**20


def current_mib(group: Path) -> float:
    return int((group / CURRENT).read_text()) / 2**20


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure_vllm(tmp: Path) -> None:
    from vllm_cpu import VllmServer

    with cgroup("vllm") as group:
        server = VllmServer(18731, tmp / "vllm.log", "all-minilm-l6-v2")
        original = subprocess.Popen

        def popen_in_group(*args, **kwargs):
            return original(*args, preexec_fn=lambda: enter(group), **kwargs)

        subprocess.Popen = popen_in_group  # type: ignore[misc]
        try:
            server.start()
        finally:
            subprocess.Popen = original  # type: ignore[misc]
        try:
            idle = current_mib(group)
            texts = [f"def function_{i}(x):\n    return x * {i}  # chunk {i}" * 4 for i in range(2000)]
            with httpx.Client(timeout=300) as client:
                for start in range(0, len(texts), 64):
                    batch = texts[start : start + 64]
                    reply = client.post(
                        server.url + "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": batch}
                    )
                    reply.raise_for_status()
            print(
                f"vllm (cpu build, 1 GiB KV cache): idle {idle:.0f} MiB, "
                f"peak {peak_mib(group):.0f} MiB after 2,000 inputs"
            )
        finally:
            server.stop()


def measure_watcher(tmp: Path) -> None:
    from standins.gce_metadata import GceMetadataStandin

    cli = Path(sys.executable).parent / "embedstack"
    with GceMetadataStandin(control_port=0) as metadata, cgroup("watcher") as group:
        env = {
            **os.environ,
            "EMBEDSTACK_PREEMPT_METADATA_URL": metadata.url,
            "EMBEDSTACK_PREEMPT_ACTIONS": '[["/bin/true"]]',
        }
        proc = subprocess.Popen(
            [str(cli), "preempt-watch"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=lambda: enter(group),
        )
        try:
            time.sleep(10)
            if proc.poll() is not None:
                raise RuntimeError(f"the watcher exited with {proc.returncode}")
            print(f"preemption watcher: peak {peak_mib(group):.0f} MiB over 10 s of polling")
        finally:
            stop(proc)


def measure_snapshot_upload(tmp: Path) -> None:
    import yaml
    from standins.gce_metadata import GceMetadataStandin
    from standins.gcs import GcsStandin
    from standins.qdrant import QdrantSnapshotStandin

    key, size = "qdrant-bench-key-" + "k" * 16, 256 * 2**20
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump({"service": {"host": "0.0.0.0", "http_port": 6333, "api_key": key}}))
    script = REPO / "roles/qdrant_snapshots/files/qdrant-snapshot-upload"
    with (
        GceMetadataStandin(control_port=0) as metadata,
        GcsStandin(metadata.token_valid) as gcs,
        QdrantSnapshotStandin(key, size=size) as qdrant,
        cgroup("snapshots") as group,
    ):
        gcs.create_bucket("bench")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "QDRANT_SNAPSHOTS_BUCKET": "bench",
            "QDRANT_SNAPSHOTS_PREFIX": "qdrant/",
            "QDRANT_SNAPSHOTS_QDRANT_URL": qdrant.url,
            "QDRANT_SNAPSHOTS_QDRANT_CONFIG": str(config),
            "QDRANT_SNAPSHOTS_METADATA_URL": metadata.url,
            "QDRANT_SNAPSHOTS_STORAGE_URL": gcs.url,
        }
        # /usr/bin/python3, as the unit runs it
        subprocess.run(
            ["/usr/bin/python3", str(script)], env=env, check=True, capture_output=True, preexec_fn=lambda: enter(group)
        )
        print(f"snapshot upload: peak {peak_mib(group):.0f} MiB streaming a {size // 2**20} MiB snapshot")


def main() -> None:
    if not (MEMORY_ROOT / "cgroup.procs").exists():
        raise SystemExit(f"needs a memory cgroup hierarchy at {MEMORY_ROOT} (and root)")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"unit-memory-bench-{os.getpid()}"
    tmp.mkdir()
    measure_watcher(tmp)
    measure_snapshot_upload(tmp)
    measure_vllm(tmp)


if __name__ == "__main__":
    main()
