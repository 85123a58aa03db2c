"""`embedstack preempt-watch` against the metadata stand-in: it drains on preemption, in order and
inside its budget, survives a flaky or absent metadata server without busy-looping, and stops
cleanly on SIGTERM. One test drains a real gateway under load."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from embedstack.errors import ConfigError
from embedstack.ops.preempt import DEFAULT_ACTIONS, PreemptionWatcher, WatchSettings, load_watch_settings
from standins.base import StandinHandler, StandinServer

HERE = Path(__file__).parent
STOP_PROCESS = HERE / "stop_process.py"
MODEL = "all-minilm-l6-v2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marker_action(path: Path, text: str, sleep: float = 0) -> tuple[str, ...]:
    """A drain step that needs no systemd: append `text` to `path` (after `sleep` seconds)."""
    code = f"import time; time.sleep({sleep}); open({str(path)!r}, 'a').write({text!r} + '\\n')"
    return (sys.executable, "-c", code)


def settings(url: str, actions: tuple[tuple[str, ...], ...], **kw) -> WatchSettings:
    return WatchSettings(metadata_url=url, actions=actions, **{"wait_seconds": 30, "backoff_max": 0.5, **kw})


def run_in_thread(watcher: PreemptionWatcher) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(watcher.run()), daemon=True)
    thread.start()
    return thread, result


# -- settings -------------------------------------------------------------------------------------


def test_settings_come_from_the_environment_and_flags_override_them():
    env = {
        "EMBEDSTACK_PREEMPT_METADATA_URL": "http://10.213.0.1:80/",
        "EMBEDSTACK_PREEMPT_ACTIONS": json.dumps(["systemctl stop a.service", ["/bin/echo", "two words"]]),
        "EMBEDSTACK_PREEMPT_BUDGET_SECONDS": "20",
        "EMBEDSTACK_PREEMPT_WAIT_SECONDS": "60",
    }
    s = load_watch_settings(env)
    assert s.metadata_url == "http://10.213.0.1:80"
    assert s.actions == (("systemctl", "stop", "a.service"), ("/bin/echo", "two words"))
    assert (s.budget_seconds, s.wait_seconds) == (20, 60)
    flags = load_watch_settings(env, actions=["true"], budget_seconds=5, metadata_url="http://127.0.0.1:1")
    assert flags.actions == (("true",),) and flags.budget_seconds == 5 and flags.metadata_url == "http://127.0.0.1:1"
    assert load_watch_settings({}).actions == DEFAULT_ACTIONS
    assert DEFAULT_ACTIONS[0][-1] == "embedstack-gateway.service"  # the gateway drains before vLLM stops


@pytest.mark.parametrize(
    "env",
    [
        {"EMBEDSTACK_PREEMPT_ACTIONS": "systemctl stop x"},
        {"EMBEDSTACK_PREEMPT_ACTIONS": '[""]'},
        {"EMBEDSTACK_PREEMPT_ACTIONS": "[1]"},
        {"EMBEDSTACK_PREEMPT_BUDGET_SECONDS": "soon"},
        {"EMBEDSTACK_PREEMPT_BUDGET_SECONDS": "0"},
        {"EMBEDSTACK_PREEMPT_METADATA_URL": "metadata.google.internal"},
    ],
)
def test_bad_settings_fail_with_a_message_naming_them(env):
    with pytest.raises(ConfigError):
        load_watch_settings(env)


# -- watching and draining ------------------------------------------------------------------------


def test_flipping_preempted_runs_the_actions_in_order(metadata, tmp_path):
    log = tmp_path / "steps"
    watcher = PreemptionWatcher(settings(metadata.url, (marker_action(log, "gateway"), marker_action(log, "vllm"))))
    thread, result = run_in_thread(watcher)
    time.sleep(1.5)
    assert thread.is_alive() and not log.exists()  # waiting, not polling in a loop
    polls_before = watcher.polls
    metadata.preempt()
    thread.join(15)
    report = result[0]
    assert log.read_text().split() == ["gateway", "vllm"]
    assert report.ok and report.reason == "preempted"
    assert [s.returncode for s in report.steps] == [0, 0]
    assert report.seconds < 10
    assert watcher.polls - polls_before <= 1  # the hanging GET itself returned the change
    assert polls_before <= 3


def test_a_vm_already_preempted_at_start_drains_at_once(metadata, tmp_path):
    metadata.preempt()
    log = tmp_path / "steps"
    report = PreemptionWatcher(settings(metadata.url, (marker_action(log, "gateway"),))).run()
    assert report.ok and log.read_text() == "gateway\n"


def test_metadata_server_errors_back_off_and_the_drain_still_happens(metadata, tmp_path):
    metadata.fail_next(6, 503)
    log = tmp_path / "steps"
    watcher = PreemptionWatcher(settings(metadata.url, (marker_action(log, "gateway"),)))
    thread, result = run_in_thread(watcher)
    time.sleep(2)
    metadata.preempt()
    thread.join(15)
    assert result[0].ok and log.read_text() == "gateway\n"
    assert watcher.errors == 6
    assert watcher.polls <= 10  # 6 failures with back-off, then at most a few real polls


def test_an_absent_metadata_server_is_retried_with_back_off_not_in_a_busy_loop(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    watcher = PreemptionWatcher(settings(url, (marker_action(tmp_path / "steps", "x"),), backoff_max=1))
    thread, result = run_in_thread(watcher)
    time.sleep(2.5)
    watcher.stop()
    thread.join(5)
    assert result == [None]  # stopped, never drained
    assert not (tmp_path / "steps").exists()
    assert 2 <= watcher.errors <= 7  # 0.5, 1, 1 ... s apart


class _NoWaitHandler(StandinHandler):
    """A server that ignores wait_for_change and answers FALSE at once, with or without the flavor."""

    protocol_version = "HTTP/1.0"
    routes = (("GET", ".*", "preempted"),)
    flavor = True

    def preempted(self):
        self.send(200, b"FALSE", None, {"Metadata-Flavor": "Google"} if self.flavor else None)


@pytest.mark.parametrize("flavor", [True, False], ids=["ignores-wait", "not-a-metadata-server"])
def test_a_server_answering_at_once_is_polled_at_most_once_a_second(flavor, tmp_path):
    handler = type("H", (_NoWaitHandler,), {"flavor": flavor})
    with StandinServer(handler) as server:
        watcher = PreemptionWatcher(settings(server.url, (("true",),), backoff_max=1))
        thread, result = run_in_thread(watcher)
        time.sleep(2.5)
        watcher.stop()
        thread.join(5)
    assert result == [None]
    assert watcher.polls <= 4
    assert (watcher.errors > 0) is not flavor


def test_the_budget_bounds_a_slow_step_and_later_steps_still_run(tmp_path):
    log = tmp_path / "steps"
    slow = marker_action(log, "never", sleep=30)
    watcher = PreemptionWatcher(settings("http://127.0.0.1:1", (slow, marker_action(log, "vllm")), budget_seconds=1.5))
    started = time.monotonic()
    report = watcher.drain("test")
    assert time.monotonic() - started < 6
    assert [s.returncode for s in report.steps] == [None, 0]
    assert log.read_text() == "vllm\n"
    assert not report.ok


def test_a_missing_command_is_reported_and_the_next_step_runs(tmp_path):
    log = tmp_path / "steps"
    report = PreemptionWatcher(
        settings("http://127.0.0.1:1", (("/nonexistent/systemctl", "stop", "x"), marker_action(log, "vllm")))
    ).drain("test")
    assert [s.returncode for s in report.steps] == [127, 0]
    assert log.read_text() == "vllm\n"


# -- the command ----------------------------------------------------------------------------------


def watch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "embedstack.cli", "preempt-watch", *args]


def test_sigterm_while_waiting_exits_0_at_once(metadata, tmp_path):
    proc = subprocess.Popen(
        watch_command("--metadata-url", metadata.url, "--action", "true"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.5)  # imports, first read, now hanging in wait_for_change
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert time.monotonic() - started < 2
    assert "stopped by SIGTERM" in out and "draining" not in out


def test_drain_now_runs_the_actions_and_prints_the_drain_time(tmp_path):
    log = tmp_path / "steps"
    env = {**os.environ, "EMBEDSTACK_PREEMPT_ACTIONS": json.dumps([list(marker_action(log, "gateway"))])}
    proc = subprocess.run(
        watch_command("--drain-now", "--reason", "shutdown-script"), env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["reason"] == "shutdown-script" and summary["drain_seconds"] < 10
    assert "step 1/1" in proc.stderr
    assert log.read_text() == "gateway\n"


def test_the_command_does_not_import_torch():
    code = "import sys; from embedstack.cli import main; import embedstack.ops.preempt; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


# -- a real gateway drained under load -------------------------------------------------------------


def embed(client: httpx.Client, url: str, texts: list[str]) -> httpx.Response:
    return client.post(url + "/v1/embeddings", json={"model": MODEL, "input": texts, "encoding_format": "base64"})


@pytest.mark.timeout(120)
def test_preemption_drains_a_real_gateway_without_losing_a_request(metadata, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gateway_log = (tmp_path / "gateway.log").open("w")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "embedstack.cli", "serve"],
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "EMBEDSTACK_COMPILE": "off",
            "EMBEDSTACK_PORT": str(port),
            "EMBEDSTACK_DRAIN_SECONDS": "20",
        },
        stdout=gateway_log,
        stderr=subprocess.STDOUT,
    )
    pidfile = tmp_path / "gateway.pid"
    pidfile.write_text(str(gateway.pid))
    watcher = None
    try:
        deadline = time.monotonic() + 90
        while True:
            assert gateway.poll() is None and time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)

        # The watcher's first action is what `systemctl stop embedstack-gateway.service` does.
        watcher = subprocess.Popen(
            watch_command("--metadata-url", metadata.url, "--budget", "28"),
            env={
                **os.environ,
                "EMBEDSTACK_PREEMPT_ACTIONS": json.dumps([[sys.executable, str(STOP_PROCESS), str(pidfile), "25"]]),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        outcomes: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def client(worker: int) -> None:
            with httpx.Client(timeout=60) as c:
                n = 0
                while not stop.is_set():
                    n += 1
                    texts = [f"def f_{worker}_{n}_{k}(x):\n    return x * {k}  # " + "word " * 80 for k in range(20)]
                    try:
                        outcome = str(embed(c, url, texts).status_code)
                    except httpx.ConnectError:
                        outcome = "refused"  # listener closed: nothing was accepted
                    except httpx.TransportError as exc:
                        outcome = f"lost: {type(exc).__name__}"
                    with lock:
                        outcomes.append(outcome)
                    if outcome in ("503", "refused"):
                        return

        threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(3)  # requests in flight and queued
        with lock:
            before = len(outcomes)
        flipped = time.monotonic()
        metadata.preempt()
        ready = None
        while time.monotonic() - flipped < 5:
            try:
                ready = httpx.get(url + "/ready", timeout=2)
            except httpx.TransportError:
                break
            if ready.status_code == 503:
                break
            time.sleep(0.05)
        assert ready is not None and ready.status_code == 503, "/ready did not turn 503 after the flip"
        ready_503_after = time.monotonic() - flipped
        assert gateway.wait(40) == 0
        out, err = watcher.communicate(timeout=40)
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        for proc in (watcher, gateway):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        gateway_log.close()

    assert watcher.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    print(f"\ndrain: /ready 503 after {ready_503_after:.2f} s, drain complete in {summary['drain_seconds']:.2f} s")
    assert summary["ok"] and summary["reason"] == "preempted" and summary["drain_seconds"] < 28
    lost = [o for o in outcomes if o.startswith("lost")]
    assert not lost, outcomes
    assert set(outcomes) <= {"200", "503", "refused"}, outcomes
    assert outcomes[before:].count("200") >= 1, outcomes  # requests in flight at the flip were answered
    assert "drained (complete)" in (tmp_path / "gateway.log").read_text()
    assert "step 1/1" in err and "drain complete" in err
