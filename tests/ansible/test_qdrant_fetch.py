"""What the qdrant role does with the pinned release when it can, and when it cannot, fetch it.

Real Ansible runs the role's preflight, fetch and record tasks on localhost against a release mirror on loopback
(`qdrant_release_base_url`, which keeps GitHub's <base>/v<version>/<asset> layout) and against a closed port, as a
host without GitHub sees it. The record the role leaves is then read by the same remote_checks.py that
`embedstack health` runs on a host over SSH.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import pytest
import yaml
from ansible_play import ROLES, run_play, task_results

DEFAULTS = yaml.safe_load((ROLES / "qdrant" / "defaults" / "main.yml").read_text())
VERSION = DEFAULTS["qdrant_version"]
KEY = "qdrant-admin-key-0123456789"
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    """A release mirror holding a stand-in tarball (not Qdrant: only its bytes and their sha256 matter here)."""
    root = tmp_path_factory.mktemp("mirror")
    payload = b"not a qdrant release, only bytes with a known sha256\n"
    for arch in ("x86_64", "aarch64"):
        asset = root / f"v{VERSION}" / f"qdrant-{arch}-unknown-linux-musl.tar.gz"
        asset.parent.mkdir(exist_ok=True)
        asset.write_bytes(payload)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", payload
    finally:
        server.shutdown()
        server.server_close()


def cases(mirror_url: str, payload: bytes) -> dict[str, dict]:
    digest = hashlib.sha256(payload).hexdigest()
    own_pin = {"qdrant_release_sha256": {"x86_64": digest, "aarch64": digest}}
    return {
        "fetched": {"qdrant_release_base_url": mirror_url, **own_pin},
        "unreachable_skipped": {"qdrant_release_base_url": CLOSED, "qdrant_skip_unfetchable_release": True},
        "unreachable_fails": {"qdrant_release_base_url": CLOSED},
        # The mirror serves other bytes than the pinned release: refused even where an unreachable one is skipped.
        "other_bytes": {"qdrant_release_base_url": mirror_url, "qdrant_skip_unfetchable_release": True},
        "opted_out": {"qdrant_install_binary": False},
    }


@pytest.fixture(scope="module")
def outcomes(mirror: tuple[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    workdir = tmp_path_factory.mktemp("qdrant-fetch")
    tasks: list[dict] = []
    specs = cases(*mirror)
    for case, variables in specs.items():
        config_dir = workdir / case / "etc"
        config_dir.mkdir(parents=True)
        # A record left by an earlier run that could not fetch the release: an install must remove it.
        (config_dir / "not-running.json").write_text('{"reason": "stale"}\n')
        scoped = {
            "qdrant_api_key": KEY,
            "qdrant_config_dir": str(config_dir),
            "qdrant_download_dir": str(workdir / case / "download"),
            **variables,
        }
        steps = [
            {
                "name": f"Run the {part} tasks ({case})",
                "ansible.builtin.include_role": {"name": "qdrant", "tasks_from": f"{part}.yml", "public": True},
                "vars": scoped,
            }
            for part in ("preflight", "fetch", "record")
        ]
        result = "{{ {'place': qdrant_place_binary | default(false), 'runs': qdrant_runs | default('unset')} }}"
        tasks.append(
            {
                "name": f"Case {case}",
                "block": [*steps, {"name": f"Report ({case})", "ansible.builtin.debug": {"msg": result}}],
                "rescue": [
                    {"name": f"Report ({case})", "ansible.builtin.debug": {"msg": "{{ ansible_failed_result.msg }}"}}
                ],
            }
        )
    plays = [{"name": "Fetch the release", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    _, report = run_play(plays, workdir, timeout=240)
    results = task_results(report)
    found = {}
    for case in specs:
        outcome = [r["msg"] for name, r in results if name == f"Report ({case})" and not r.get("skipped")]
        record = workdir / case / "etc" / "not-running.json"
        found[case] = {
            "outcome": outcome[-1],
            "record": json.loads(record.read_text()) if record.exists() else None,
            "record_path": record,
            "downloaded": sorted(p.name for p in (workdir / case / "download").glob("*")),
        }
    return found


def health_rows(record: Path) -> list[dict]:
    """What `embedstack health` reports for Qdrant on a host holding that record (remote_checks.py, run as there)."""
    params = {"only": ["qdrant"], "qdrant": {"port": 9, "not_running_record": str(record), "canary": False}}
    script = f"PARAMS = {params!r}\n" + resources.files("embedstack.ops").joinpath("remote_checks.py").read_text()
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def test_a_fetched_release_is_placed_and_any_old_record_removed(outcomes: dict) -> None:
    fetched = outcomes["fetched"]
    assert fetched["outcome"] == {"place": True, "runs": True}
    assert fetched["downloaded"] == [next(iter(fetched["downloaded"]))]
    assert fetched["downloaded"][0].endswith("-unknown-linux-musl.tar.gz")
    assert fetched["record"] is None


def test_an_unfetchable_release_is_recorded_with_why_and_the_variable_that_fixes_it(outcomes: dict) -> None:
    skipped = outcomes["unreachable_skipped"]
    assert skipped["outcome"] == {"place": False, "runs": False}
    record = skipped["record"]
    assert record["reason"] == "the Qdrant release could not be fetched"
    assert record["variable"] == "qdrant_local_file"
    assert record["url"].startswith(f"{CLOSED}/v{VERSION}/qdrant-") and record["url"].endswith("-linux-musl.tar.gz")
    assert record["sha256"] in DEFAULTS["qdrant_release_sha256"].values()
    assert "refused" in record["error"].lower(), record["error"]
    assert record["fix"].startswith("set qdrant_local_file to a copy of qdrant-")
    # ...and health reports it as not running, never ok, in those words.
    rows = health_rows(skipped["record_path"])
    assert rows == [{"check": "qdrant", "ok": False, "missing": True, "detail": rows[0]["detail"]}]
    detail = rows[0]["detail"]
    assert detail.startswith("not running: the Qdrant release could not be fetched (" + record["url"])
    assert "To fix it: set qdrant_local_file to a copy of" in detail and record["sha256"] in detail


def test_an_unfetchable_release_fails_the_play_unless_skipping_is_asked_for(outcomes: dict) -> None:
    message = outcomes["unreachable_fails"]["outcome"]
    assert isinstance(message, str) and "refused" in message.lower(), message
    assert outcomes["unreachable_fails"]["record"] == {"reason": "stale"}  # the play stopped before recording


def test_a_release_with_other_bytes_is_refused_even_when_skipping(outcomes: dict) -> None:
    message = outcomes["other_bytes"]["outcome"]
    assert isinstance(message, str), message
    assert "was downloaded but The checksum" in message and "Nothing was installed" in message, message
    assert outcomes["other_bytes"]["downloaded"] == []


def test_opting_out_is_recorded_too(outcomes: dict) -> None:
    opted_out = outcomes["opted_out"]
    assert opted_out["record"]["variable"] == "qdrant_install_binary"
    [row] = health_rows(opted_out["record_path"])
    assert not row["ok"] and row["missing"]
    assert row["detail"] == (
        "not running: qdrant_install_binary is false. To fix it: set qdrant_install_binary to true (the default) "
        "and run the play again"
    )


def test_a_host_without_a_record_is_checked_as_running(tmp_path: Path) -> None:
    rows = {row["check"]: row for row in health_rows(tmp_path / "absent.json")}
    assert "qdrant" not in rows
    assert not rows["qdrant /readyz"]["ok"]  # nothing listens on port 9: a Qdrant that should run and does not fails
