"""End-to-end: a spot VM of the embedding tier bootstraps itself, is preempted under Roo-like
load without losing a request, boots again and embeds through the official client. On every
boot vLLM starts only after the boot unit made the NVIDIA device nodes (issue 23, section 1).
The VM the managed instance group creates after a preemption (instanceTerminationAction DELETE)
boots from a fresh disk with the same metadata, as the first boot does: no second cold boot
(6.5 minutes on 2 cores) is run for it.

Real: a Debian 12 systemd container (privileged LXC) as the VM, its gateway serving HTTPS with a
certificate from a test CA as the Pulumi program would hand it over (embedstack-secrets), every
client verifying it; pulumi/bootstrap/startup.sh and
shutdown.sh unchanged, fetched from the metadata server by the guest agent stand-in; the bundle
built by pulumi/bundle_build.py for stack l4 (plus the CPU variant's vars); ansible-core from
PyPI inside the VM; the roles; the GPU tier's chain, the gateway in front of the real vLLM (its
cpu build) serving all-MiniLM-L6-v2; the preemption watcher and the systemd shutdown of the VM.

STAND-INS (gcp_vm_lab.py, conftest.py): the GCE metadata server and Cloud Storage
(tests/standins/); google-guest-agent (two small units); GCE's preemption (metadata
`preempted` flips to TRUE while `lxc-stop -t 30` delivers the soft-off, i.e. systemd poweroff,
with a hard kill at 30 s); the GPU (vLLM's
cpu build); the wheelhouses and the model (bind-mounted and installed offline, never PyPI's CUDA
torch); nvidia-modprobe and CUDA's start-up check (gcp_vm_lab.NVIDIA_MODPROBE, CUDA_INIT).

Run as root: PATH=.venv/bin:$PATH ANSIBLE_CONFIG=$PWD/ansible.cfg .venv/bin/pytest tests/gcp_container -q -s
The figures (boot-to-ready, drain time, time to off, reboot-to-ready, request counts) are printed.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import gcp_vm_lab as lab
import httpx
import numpy as np
import pytest
from roo_traffic import CLIENTS, ReadyWatch, Traffic

MODEL = "all-minilm-l6-v2"
DIMENSION = 384
# First boot on 2 cores: ansible from PyPI, two wheelhouses copied and installed, vLLM's start.
READY_TIMEOUT = 900


def say(text: str) -> None:
    print(f"[gcp-e2e] {text}", flush=True)


def startup_outcome(vm: lab.Vm) -> tuple[int, int] | None:
    """(exit status, seconds) of the startup-script once the guest agent stand-in ran it."""
    shown = vm.attach("systemctl", "show", "-p", "ExecMainExitTimestampMonotonic", "google-startup-scripts.service")
    if not re.search(r"ExecMainExitTimestampMonotonic=[1-9]", shown.stdout):
        return None
    log = vm.attach("journalctl", "--no-pager", "-o", "cat", "-u", "google-startup-scripts.service").stdout
    found = re.findall(r"startup-script exit status (\d+) after (\d+) s", log)
    return (int(found[-1][0]), int(found[-1][1])) if found else (-1, 0)


def boot(gce: Any, vm: lab.Vm, fresh: bool = True) -> dict[str, float]:
    """Create (unless it is a reboot of the same disk) and start the VM; wait for /ready 200 and for the
    startup-script to finish."""
    if fresh:
        vm.create()
    started = time.monotonic()
    vm.start()
    ready_at: float | None = None
    outcome: tuple[int, int] | None = None
    next_check = started
    while time.monotonic() - started < READY_TIMEOUT:
        if ready_at is None:
            try:
                if httpx.get(vm.url + "/ready", timeout=2, verify=gce.tls.context()).status_code == 200:
                    ready_at = time.monotonic()
            except httpx.HTTPError:
                pass
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 3
            outcome = startup_outcome(vm)
            if outcome is not None:
                if outcome[0] != 0:
                    tail = vm.journal("-u", "google-startup-scripts.service", "-n", "60")
                    pytest.fail(f"the startup-script failed (exit status {outcome[0]}) on {vm.name}:\n{tail}")
                if ready_at is not None:
                    break
        time.sleep(0.5)
    else:
        tail = vm.journal("-u", "google-startup-scripts.service", "-n", "60")
        pytest.fail(f"{vm.name}: no /ready 200 and finished bootstrap within {READY_TIMEOUT} s:\n{tail}")
    assert ready_at is not None and outcome is not None
    # The gateway may have been restarted by a handler after its first 200: it must be ready now.
    assert lab.wait_until(lambda: _ready(vm, gce.tls), 120), f"{vm.name}: /ready not 200 after the bootstrap"
    units = ("vllm.service", "embedstack-gateway.service", "embedstack-preempt.service")
    active = vm.attach("systemctl", "is-active", *units)
    assert active.stdout.split() == ["active"] * len(units), active.stdout + vm.journal("-n", "80")
    return {"ready": ready_at - started, "bootstrap": float(outcome[1]), "done": time.monotonic() - started}


def _ready(vm: lab.Vm, tls: lab.Tls) -> bool:
    try:
        return httpx.get(vm.url + "/ready", timeout=2, verify=tls.context()).status_code == 200
    except httpx.HTTPError:
        return False


def assert_vllm_found_its_gpu_nodes(vm: lab.Vm) -> None:
    """This boot's /dev had no NVIDIA node until the boot unit ran the (stand-in) nvidia-modprobe as root, and CUDA's
    (stand-in) initialisation in vllm.service then opened them as the vllm user (issue 23, section 1)."""
    null = vm.attach("stat", "-c", "%t:%T", "/dev/null").stdout.strip()
    for node in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"):
        shown = vm.attach("stat", "-c", "%F %t:%T %a %U", node).stdout.strip()
        assert shown == f"character special file {null} 666 root", f"{node}: {shown}"
    unit = vm.journal("-b", "0", "-o", "cat", "-u", "embedstack-nvidia-uvm.service")
    assert "nvidia-modprobe (stand-in): created /dev/nvidia-uvm" in unit, unit
    cuda = vm.journal("-b", "0", "-o", "cat", "-u", "vllm.service")
    assert "cuda-init (stand-in): /dev/nvidiactl, /dev/nvidia0 and /dev/nvidia-uvm open read-write as vllm" in cuda
    assert "CUDA initialisation failed" not in cuda, cuda[-3000:]


def require_vm(gce: Any) -> lab.Vm:
    if gce.vm is None:
        pytest.fail("the first boot did not bring the VM up (see the test before this one)")
    return gce.vm


# -- 1. first boot --------------------------------------------------------------------------------


@pytest.mark.timeout(1200)
def test_first_boot_runs_the_startup_script_and_serves(gce):
    vm = lab.Vm("es-gcp-embed-1")
    times = boot(gce, vm)
    gce.vm = vm
    gce.figures["first_boot"] = times
    assert_vllm_found_its_gpu_nodes(vm)
    assert gce.storage.downloads == [gce.bundle.object_name]
    assert gce.metadata.state.tokens, "the bundle was not fetched with a metadata-server token"
    say(
        f"first boot: container start -> /ready 200 in {times['ready']:.1f} s; startup-script done in "
        f"{times['bootstrap']:.0f} s (bundle {gce.bundle.object_name})"
    )


# -- 2. preemption under load -----------------------------------------------------------------------


def _journal_after(vm: lab.Vm, since_wall: float) -> list[dict[str, Any]]:
    return [
        e
        for e in vm.journal_json(f"--since=@{int(since_wall) - 2}")
        if int(e.get("__REALTIME_TIMESTAMP", 0)) / 1e6 >= since_wall - 2
    ]


def _messages(entries: list[dict[str, Any]], unit: str) -> list[tuple[float, str]]:
    """(wall time, message) of a unit's own output and of systemd's lines about it."""
    out = []
    for e in entries:
        if unit in (e.get("_SYSTEMD_UNIT"), e.get("UNIT")):
            message = e.get("MESSAGE")
            if isinstance(message, list):  # journald hands non-UTF-8 messages over as bytes
                message = bytes(message).decode("utf-8", "replace")
            out.append((int(e["__REALTIME_TIMESTAMP"]) / 1e6, str(message)))
    return out


@pytest.mark.timeout(600)
def test_preemption_under_roo_load_loses_no_request(gce):
    vm = require_vm(gce)
    traffic = Traffic(vm.url, gce.api_key, MODEL, DIMENSION, clients=CLIENTS, verify=gce.tls.context()).start()
    watch: ReadyWatch | None = None
    try:
        # Steady load first: every client has had a batch embedded (or something went wrong).
        steady = lab.wait_until(
            lambda: (
                traffic.count("failure") > 0
                or all(any(o.kind == "ok" for o in outs) for outs in traffic.per_client().values())
            ),
            timeout=240,
        )
        assert steady, f"no steady load before the notice: {dict(traffic.counts())}"
        assert traffic.count("failure") == 0, [o.detail for o in traffic.outcomes if o.kind == "failure"]
        before = dict(traffic.counts())

        watch = ReadyWatch(vm.url, verify=gce.tls.context()).start()
        off: dict[str, Any] = {}

        def acpi_soft_off() -> None:
            off["result"] = vm.soft_off(lab.PREEMPTION_WINDOW)
            off["at"] = time.monotonic()

        power = threading.Thread(target=acpi_soft_off, name="acpi-soft-off")
        # GCE: `preempted` turns TRUE and the ACPI soft-off arrives at the same moment.
        notice_wall = time.time()
        notice = traffic.notice_at = time.monotonic()
        gce.metadata.preempt()
        power.start()
        power.join(lab.PREEMPTION_WINDOW + 60)
        finished = traffic.join(90)
    finally:
        traffic.stop()
        if watch is not None:
            watch.stop()

    # -- what the clients saw ------------------------------------------------------------------
    counts = traffic.counts()
    per_client = traffic.per_client()
    failures = [o for o in traffic.outcomes if o.kind == "failure"]
    accepted_then_refused = [
        o for o in traffic.outcomes if o.kind == "refused" and o.sent < notice and "drained before" in o.detail
    ]
    say(
        f"preemption under load ({CLIENTS} clients x 60 chunks): ok={counts['ok']} "
        f"refused-retryable={counts['refused']} not-sent={counts['not-sent']} failures={counts['failure']} "
        f"(before the notice: {before.get('ok', 0)} ok)"
    )
    if accepted_then_refused:
        say(
            f"  {len(accepted_then_refused)} requests accepted before the notice were answered 503 "
            "(Retry-After) at the gateway's drain deadline instead of being embedded"
        )
    for o in failures:
        say(f"  FAILURE client {o.client} #{o.seq} sent at {o.sent - notice:+.2f} s: {o.detail}")

    # -- what the VM did (its journal, read from its disk now that it is off) ------------------
    entries = _journal_after(vm, notice_wall)
    gateway = _messages(entries, "embedstack-gateway.service")
    watcher = _messages(entries, "embedstack-preempt.service")
    shutdown = _messages(entries, "google-shutdown-scripts.service")
    stopped = [t for t, m in gateway if m.startswith("Stopped ") or m.endswith("Deactivated successfully.")]
    vllm_stopped = [
        t
        for t, m in _messages(entries, "vllm.service")
        if m.startswith("Stopped ") or m.endswith("Deactivated successfully.")
    ]
    killed = [m for _, m in gateway if "Killing process" in m or "timed out" in m or "SIGKILL" in m]
    drain_lines = [
        m.split("embedstack.served_models: ", 1)[-1] for _, m in gateway if "embedstack.served_models: drain" in m
    ]
    drain_time = stopped[0] - notice_wall if stopped else None
    off_time = off["at"] - notice if "at" in off else None
    say(
        "drain: preempted=TRUE -> gateway exited "
        + (f"{drain_time:.2f} s" if drain_time is not None else "NOT SEEN")
        + (f"; /ready 503 after {max(0.0, watch.not_ready_at - notice):.2f} s" if watch and watch.not_ready_at else "")
        + (f"; port closed after {watch.closed_at - notice:.2f} s" if watch and watch.closed_at else "")
        + (f"; VM off after {off_time:.2f} s (hard off at {lab.PREEMPTION_WINDOW} s)" if off_time else "")
    )
    for line in drain_lines:
        say(f"  gateway: {line}")
    for _, m in watcher:
        if "embedstack.preempt" in m or m.startswith("{"):
            say(f"  watcher: {m.split('embedstack.preempt: ', 1)[-1]}")
    for _, m in shutdown:
        if "systemd" not in m and not m.startswith(("Stopping", "Stopped", "google-shutdown")):
            say(f"  shutdown-script: {m}")
    gce.figures["preemption"] = {"counts": dict(counts), "drain": drain_time, "off": off_time}

    # -- the verdict -------------------------------------------------------------------------------
    assert finished, "a client was still waiting for an answer 90 s after the VM went off"
    assert not failures, f"{len(failures)} requests were lost, reset or answered wrongly (printed above)"
    assert counts["ok"] > 0
    for client, outcomes in per_client.items():
        answered = [o for o in outcomes if o.kind != "not-sent"]
        assert any(o.kind == "ok" for o in answered), f"client {client} never got a batch embedded"
        assert answered[-1].kind in ("ok", "refused"), f"client {client} ended with {answered[-1]}"
        assert outcomes[-1].kind == "not-sent", f"client {client} did not run until the gateway was gone"
    assert off.get("result") is not None and off["result"].returncode == 0, off.get("result")
    assert vm.state() == "STOPPED"
    assert off_time is not None and off_time < lab.PREEMPTION_WINDOW, "the VM needed the hard off"
    assert any("preempted=TRUE" in m for _, m in watcher), "the watcher never saw preempted=TRUE"
    assert drain_lines and drain_lines[-1].startswith("drained ("), gateway[-20:]
    assert drain_time is not None and drain_time < lab.PREEMPTION_WINDOW, gateway[-20:]
    assert not killed, f"systemd had to kill the gateway: {killed}"
    assert vllm_stopped and stopped[0] <= vllm_stopped[0], "vLLM stopped before the gateway had drained"
    said = "\n".join(m for _, m in shutdown)
    assert "Starting shutdown scripts." in said and "shutdown-script exit status 0" in said, said
    assert "nothing to drain" not in said, (
        "the shutdown-script found no preemption settings (it looks for a file the preemption role "
        f"does not write):\n{said}"
    )


# -- 3. a reboot of the same VM --------------------------------------------------------------------------


@pytest.mark.timeout(1200)
def test_the_same_vm_boots_again_and_vllm_finds_its_gpu_nodes(gce):
    """A reboot (the bootstrap's own single reboot, or an operator's): vllm.service is enabled and starts at boot,
    before the startup-script runs the roles again, on a /dev without NVIDIA nodes; the boot unit must make them
    first."""
    vm = require_vm(gce)
    assert vm.state() == "STOPPED"
    gce.metadata.state.put("instance/preempted", "FALSE")
    downloads = len(gce.storage.downloads)
    times = boot(gce, vm, fresh=False)
    assert_vllm_found_its_gpu_nodes(vm)
    assert len(gce.storage.downloads) == downloads, "a reboot re-downloaded the unpacked bundle"
    # vLLM started from multi-user.target, not only when the roles ran: the boot unit ordered itself before it.
    order = vm.journal("-b", "0", "-o", "cat", "-u", "embedstack-nvidia-uvm.service", "-u", "vllm.service")
    assert order.index("nvidia-modprobe (stand-in): created") < order.index("cuda-init (stand-in):"), order[-3000:]
    gce.figures["reboot"] = times
    say(f"reboot of the same VM: container start -> /ready 200 in {times['ready']:.1f} s")

    # A real embedding through the official client, as Roo Code sends it (no retries).
    from openai import OpenAI

    # Over HTTPS, verified against the stack's CA as Roo Code does with NODE_EXTRA_CA_CERTS.
    assert vm.url.startswith("https://")
    client = OpenAI(
        base_url=vm.url + "/v1",
        api_key=gce.api_key,
        max_retries=0,
        timeout=60,
        http_client=httpx.Client(verify=gce.tls.context()),
    )
    texts = [
        "def add(a, b):\n    return a + b",
        "def sum_two(x, y):\n    return x + y",
        "The weather in Paris is rainy in November.",
    ]
    result = client.embeddings.create(input=texts, model=MODEL)
    vectors = np.array([d.embedding for d in result.data], dtype=np.float32)
    assert vectors.shape == (3, DIMENSION)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.2, (similar, unrelated)
    # A client without the CA refuses the gateway: the certificate really is checked.
    with pytest.raises(httpx.ConnectError, match=r"(?i)certificate"):
        httpx.get(vm.url + "/ready", timeout=5)
    say(f"the rebooted VM embeds: dim {DIMENSION}, cos(add, sum_two)={similar:.3f} > cos(add, weather)={unrelated:.3f}")
    first = gce.figures.get("first_boot", {})
    pre = gce.figures.get("preemption", {})
    say(
        "summary: first boot -> ready {:.1f} s | drain {} | off {} | reboot -> ready {:.1f} s | requests {}".format(
            first.get("ready", float("nan")),
            f"{pre['drain']:.2f} s" if pre.get("drain") is not None else "n/a",
            f"{pre['off']:.2f} s" if pre.get("off") is not None else "n/a",
            times["ready"],
            pre.get("counts"),
        )
    )
