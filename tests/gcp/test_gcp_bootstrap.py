"""pulumi/bootstrap/startup.sh and shutdown.sh, run for real with bash and curl against the
metadata and storage stand-ins (the documented test overrides point them there).

`EMBEDSTACK_BOOTSTRAP_STOP_AFTER=fetch` stops after download and unpack; the full path runs
ansible-playbook from this repository's venv with `--list-hosts --list-tasks`, which proves the
one-host inventory, the group chosen by the tier and the variable files without changing this
machine. The whole configure run inside a Debian 12 container is the end-to-end test's job.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STARTUP = REPO / "pulumi" / "bootstrap" / "startup.sh"
SHUTDOWN = REPO / "pulumi" / "bootstrap" / "shutdown.sh"
VENV_BIN = Path(sys.executable).parent
BUCKET = "es-bundles-test"
OBJECT = "bundles/bundle-0123abcd.tar.gz"
SECRET = "gw-key-7f3a9c0e1b2d4f6a8c0e"
SECRETS = json.dumps({"embedding_service_api_keys": [SECRET], "qdrant_api_key": "q-" + SECRET})

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="startup.sh needs curl")


def make_bundle(vars_yml: dict, site_yml: str | None = None) -> bytes:
    """The bundle as Pulumi uploads it: ansible.cfg, ansible/, roles/, inventories/gcp/, wheels/, vars.yml
    (`site_yml` replaces ansible/site.yml)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(REPO / "ansible.cfg", "ansible.cfg")
        for folder in ("ansible", "roles", "inventories/gcp"):
            tar.add(REPO / folder, folder, filter=None if site_yml is None else _without_site_yml)
        if site_yml is not None:
            info = tarfile.TarInfo("ansible/site.yml")
            info.size = len(site_yml.encode())
            tar.addfile(info, io.BytesIO(site_yml.encode()))
        info = tarfile.TarInfo("wheels/requirements.txt")
        data = b"# the payload's pins\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        text = yaml.safe_dump(vars_yml).encode()
        info = tarfile.TarInfo("vars.yml")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return buffer.getvalue()


def _without_site_yml(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if info.name == "ansible/site.yml" else info


VARS = {
    "firewall_admin_cidrs": ["203.0.113.0/24"],
    "embedstack_client_cidrs": ["198.51.100.0/24"],
    "vllm_model": "Qwen/Qwen3-Embedding-0.6B",
}


@pytest.fixture
def deployment(metadata, gcs, tmp_path):
    """Metadata and bucket as the Pulumi program sets them up for an embedding VM."""
    gcs.readable_buckets = {BUCKET}
    gcs.put_object(BUCKET, OBJECT, make_bundle(VARS))
    metadata.set_attribute("embedstack-bundle", f"gs://{BUCKET}/{OBJECT}")
    metadata.set_attribute("embedstack-tier", "embedding")
    metadata.set_attribute("embedstack-secrets", SECRETS)
    return metadata, gcs


def run_startup(metadata, gcs, tmp_path: Path, stop_after: str = "fetch", **extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path / "tmp"),
        "EMBEDSTACK_METADATA_URL": metadata.url,
        "EMBEDSTACK_STORAGE_URL": gcs.url,
        "EMBEDSTACK_BOOTSTRAP_ROOT": str(tmp_path / "opt"),
        "EMBEDSTACK_BOOTSTRAP_SECRETS_DIR": str(tmp_path / "etc" / "bootstrap"),
        "EMBEDSTACK_BOOTSTRAP_STOP_AFTER": stop_after,
        # The serial console is a file here; stdout counts as journald, so logger stays out of it.
        "EMBEDSTACK_BOOTSTRAP_CONSOLE": str(tmp_path / "console"),
        "JOURNAL_STREAM": "test",
        **extra,
    }
    (tmp_path / "console").touch()
    return subprocess.run(["bash", str(STARTUP)], env=env, capture_output=True, text=True, timeout=120)


def bundle_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "opt" / "bundle").iterdir() if re.fullmatch(r"[0-9a-f]{16}", p.name))


@pytest.mark.parametrize("script", [STARTUP, SHUTDOWN], ids=lambda p: p.name)
def test_scripts_parse_and_pass_shellcheck_when_available(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert os.access(script, os.X_OK)
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_the_pinned_ansible_matches_the_test_requirements():
    pins = dict(
        line.split("==") for line in (REPO / "tests" / "requirements.txt").read_text().splitlines() if "==" in line
    )
    text = STARTUP.read_text()
    assert f'ANSIBLE_CORE_VERSION="{pins["ansible-core"]}"' in text
    assert f'ANSIBLE_VERSION="{pins["ansible"]}"' in text


def test_fetch_downloads_with_the_metadata_token_and_unpacks(deployment, tmp_path):
    metadata, gcs = deployment
    result = run_startup(metadata, gcs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    [bundle] = bundle_dirs(tmp_path)
    assert (bundle / "ansible" / "site.yml").is_file()
    assert (bundle / "roles" / "preemption" / "tasks" / "main.yml").is_file()
    assert (bundle / "inventories" / "gcp" / "group_vars" / "embedding.yml").is_file()
    assert (bundle / ".complete").exists()
    assert (tmp_path / "opt" / "bundle" / "current").resolve() == bundle
    assert gcs.downloads == [OBJECT]  # the slash in the object name went URL-encoded
    # The log reaches the console and stdout; the token's header file is gone.
    assert "unpacked at" in (tmp_path / "console").read_text()
    assert "stopping after fetch" in result.stdout
    assert not list((tmp_path / "tmp").iterdir())


def test_secrets_land_in_a_0600_file_and_never_in_the_log(deployment, tmp_path):
    metadata, gcs = deployment
    result = run_startup(metadata, gcs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    secrets_dir = tmp_path / "etc" / "bootstrap"
    secrets_file = secrets_dir / "secrets.yml"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert yaml.safe_load(secrets_file.read_text())["embedding_service_api_keys"] == [SECRET]
    for output in (result.stdout, result.stderr, (tmp_path / "console").read_text()):
        assert SECRET not in output


def test_a_second_boot_reuses_the_unpacked_bundle(deployment, tmp_path):
    metadata, gcs = deployment
    assert run_startup(metadata, gcs, tmp_path).returncode == 0
    again = run_startup(metadata, gcs, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already unpacked" in again.stdout
    assert gcs.downloads == [OBJECT]
    assert len(bundle_dirs(tmp_path)) == 1


def test_a_new_bundle_object_is_fetched_and_becomes_current(deployment, tmp_path):
    metadata, gcs = deployment
    assert run_startup(metadata, gcs, tmp_path).returncode == 0
    gcs.put_object(BUCKET, "bundles/bundle-next.tar.gz", make_bundle({**VARS, "vllm_max_model_len": 4096}))
    metadata.set_attribute("embedstack-bundle", f"gs://{BUCKET}/bundles/bundle-next.tar.gz")
    assert run_startup(metadata, gcs, tmp_path).returncode == 0
    assert len(bundle_dirs(tmp_path)) == 2
    current = (tmp_path / "opt" / "bundle" / "current").resolve()
    assert yaml.safe_load((current / "vars.yml").read_text())["vllm_max_model_len"] == 4096


def test_a_metadata_server_slow_to_come_up_is_retried(deployment, tmp_path):
    metadata, gcs = deployment
    metadata.fail_next(2, 503)
    result = run_startup(metadata, gcs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answered 503" in result.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"embedstack-bundle": "https://example.com/b.tar.gz"}, "must be gs://"),
        ({"embedstack-tier": "gpu"}, "embedstack-tier must be embedding or index"),
        ({"embedstack-bundle": f"gs://{BUCKET}/bundles/missing.tar.gz"}, "HTTP 404"),
        ({"embedstack-bundle": "gs://another-bucket/b.tar.gz"}, "HTTP 403"),
    ],
)
def test_bad_metadata_or_an_unreadable_object_fails_with_a_message(deployment, tmp_path, change, message):
    metadata, gcs = deployment
    for key, value in change.items():
        metadata.set_attribute(key, value)
    result = run_startup(metadata, gcs, tmp_path)
    assert result.returncode != 0
    assert message in result.stdout
    assert not (tmp_path / "opt" / "bundle" / "current").exists()


def test_missing_secrets_are_an_empty_mapping(deployment, tmp_path):
    metadata, gcs = deployment
    metadata.state.attributes.discard("embedstack-secrets")
    metadata.state.values.pop("instance/attributes/embedstack-secrets")
    result = run_startup(metadata, gcs, tmp_path)
    assert result.returncode == 0, result.stdout
    assert yaml.safe_load((tmp_path / "etc" / "bootstrap" / "secrets.yml").read_text()) == {}


@pytest.mark.skipif(not (VENV_BIN / "ansible-playbook").exists(), reason="needs ansible in the venv")
@pytest.mark.parametrize(("tier", "group"), [("embedding", "embedding"), ("index", "qdrant")])
def test_the_playbook_runs_the_tier_plays_on_a_one_host_local_inventory(deployment, tmp_path, tier, group):
    metadata, gcs = deployment
    metadata.set_attribute("embedstack-tier", tier)
    result = run_startup(
        metadata,
        gcs,
        tmp_path,
        stop_after="",
        EMBEDSTACK_BOOTSTRAP_ANSIBLE_VENV=str(VENV_BIN.parent),
        EMBEDSTACK_BOOTSTRAP_PLAYBOOK_ARGS="--list-hosts --list-tasks",
        EMBEDSTACK_BOOTSTRAP_NO_DATA_DISK="1",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    plays = re.findall(r"play #\d+ \((\S+)\): (.+?)\s+TAGS.*?\n\s+pattern:.*?\n\s+hosts \((\d+)\)", result.stdout)
    matched = {pattern: int(count) for pattern, _, count in plays}
    assert matched["embedding:qdrant"] == 1
    assert matched[group] == 1
    assert matched["qdrant" if group == "embedding" else "embedding"] == 0
    if "preemption" in (REPO / "ansible" / "site.yml").read_text():  # the line the lead adds
        [embedding_play] = [p for p in result.stdout.split("play #") if "pattern: ['embedding']" in p]
        assert "preemption : " in embedding_play
    # The one-host inventory with the bundle's group_vars, vars.yml and the secrets as extra vars.
    inventory = tmp_path / "opt" / "run" / "inventory" / "hosts.yml"
    host = next(iter(yaml.safe_load(inventory.read_text())["all"]["children"]["gcp"]["children"][group]["hosts"]))
    bundle = (tmp_path / "opt" / "bundle" / "current").resolve()
    cmd = [
        str(VENV_BIN / "ansible"),
        host,
        "-i",
        str(inventory),
        "-e",
        f"@{bundle / 'vars.yml'}",
        "-e",
        f"@{tmp_path / 'etc' / 'bootstrap' / 'secrets.yml'}",
        "-m",
        "ansible.builtin.debug",
        "-a",
        "msg={{ {'clients': firewall_client_cidrs, 'ports': firewall_client_tcp_ports, "
        "'engine': embedding_service_engine | default(''), 'preempt': embedstack_preemption | default(false), "
        "'data': qdrant_storage_path | default('')} | to_json }}",
    ]
    env = {**os.environ, "ANSIBLE_CONFIG": str(bundle / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    shown = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=bundle)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    values = json.loads(re.search(r'"msg": "(.*)"', shown.stdout).group(1).replace('\\"', '"'))
    if group == "embedding":
        assert values["engine"] == "upstream" and values["preempt"] is True and values["ports"] == [8080]
        assert "198.51.100.0/24" in values["clients"] and "35.191.0.0/16" in values["clients"]
    else:
        assert values["ports"] == [6333, 6334] and values["clients"] == ["198.51.100.0/24"]
        assert values["data"].startswith("/mnt/disks/qdrant-data/")


# -- shutdown.sh ------------------------------------------------------------------------------------


def run_shutdown(tmp_path: Path, env_file: Path) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ["PATH"],
        "EMBEDSTACK_PREEMPT_ENV_FILE": str(env_file),
        "EMBEDSTACK_PREEMPT_CLI": str(VENV_BIN / "embedstack"),
        "EMBEDSTACK_BOOTSTRAP_CONSOLE": "/dev/null",
    }
    return subprocess.run(["bash", str(SHUTDOWN)], env=env, capture_output=True, text=True, timeout=60)


def test_shutdown_script_drains_with_the_watcher_settings(tmp_path):
    steps = tmp_path / "steps"
    script = tmp_path / "stop-gateway"
    script.write_text(f"#!/bin/sh\necho gateway >> {steps}\n")
    script.chmod(0o755)
    action = [str(script)]
    env_file = tmp_path / "embedstack-preempt"
    # The same format the preemption role writes (a systemd EnvironmentFile that bash can source).
    env_file.write_text(
        "EMBEDSTACK_PREEMPT_METADATA_URL=http://127.0.0.1:1\n"
        "EMBEDSTACK_PREEMPT_BUDGET_SECONDS=10\n"
        f"EMBEDSTACK_PREEMPT_ACTIONS='{json.dumps([action])}'\n"
    )
    result = run_shutdown(tmp_path, env_file)
    assert result.returncode == 0, result.stdout
    assert steps.read_text() == "gateway\n"
    assert '"reason": "shutdown-script"' in result.stdout
    # A second run (the watcher already drained) is harmless.
    assert run_shutdown(tmp_path, env_file).returncode == 0


def test_shutdown_script_is_a_no_op_without_the_preemption_role(tmp_path):
    result = run_shutdown(tmp_path, tmp_path / "absent")
    assert result.returncode == 0
    assert "nothing to drain" in result.stdout


# -- first-boot robustness (issue 10, item 12) -----------------------------------------------------


def fake_pci(tmp_path: Path, vendor: str = "0x10de", cls: str = "0x030200") -> Path:
    """A /sys/bus/pci/devices stand-in: one device with the vendor and class files the kernel shows
    (Linux `Documentation/ABI/testing/sysfs-bus-pci`: vendor and class are hex, 0x-prefixed; an
    NVIDIA L4/A100 is vendor 0x10de, class 0x0302xx "3D controller")."""
    device = tmp_path / "pci" / "0000:00:04.0"
    device.mkdir(parents=True)
    (device / "vendor").write_text(vendor + "\n")
    (device / "class").write_text(cls + "\n")
    return tmp_path / "pci"


def fake_nvidia_smi(tmp_path: Path, failures: int) -> tuple[Path, Path]:
    """nvidia-smi that fails like a missing driver `failures` times, then lists one L4; counts calls."""
    bindir, calls = tmp_path / "fakebin", tmp_path / "nvidia-smi.calls"
    bindir.mkdir(exist_ok=True)
    script = bindir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f"echo x >> {calls}\n"
        f'if [ "$(wc -l < {calls})" -le {failures} ]; then\n'
        '  echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9\n'
        "fi\n"
        "echo 'GPU 0: NVIDIA L4 (UUID: GPU-00000000-1111-2222-3333-444444444444)'\n"
    )
    script.chmod(0o755)
    return bindir, calls


def run_gpu_boot(
    deployment, tmp_path: Path, pci: Path, bindir: Path, listing: str = "--list-hosts", **extra: str
) -> subprocess.CompletedProcess:
    metadata, gcs = deployment
    return run_startup(
        metadata,
        gcs,
        tmp_path,
        stop_after="",
        PATH=f"{bindir}:{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        EMBEDSTACK_BOOTSTRAP_ANSIBLE_VENV=str(VENV_BIN.parent),
        EMBEDSTACK_BOOTSTRAP_PLAYBOOK_ARGS=listing,
        EMBEDSTACK_BOOTSTRAP_PCI_DEVICES=str(pci),
        EMBEDSTACK_BOOTSTRAP_GPU_POLL_SEC="1",
        **extra,
    )


@pytest.mark.skipif(not (VENV_BIN / "ansible-playbook").exists(), reason="needs ansible in the venv")
def test_the_gpu_tier_waits_for_the_driver_and_says_so_on_the_console(deployment, tmp_path):
    deployment[0].set_attribute("install-nvidia-driver", "True")  # a Deep Learning VM installs its own
    bindir, calls = fake_nvidia_smi(tmp_path, failures=2)
    result = run_gpu_boot(deployment, tmp_path, fake_pci(tmp_path), bindir)
    assert result.returncode == 0, result.stdout + result.stderr
    console = (tmp_path / "console").read_text()
    assert "waiting for the NVIDIA driver (nvidia-smi) before vLLM starts" in console
    assert "NVIDIA driver ready" in console and "NVIDIA L4" in console
    assert len(calls.read_text().splitlines()) == 3
    # The roles (which start vLLM) run only after the driver answered.
    assert result.stdout.index("NVIDIA driver ready") < result.stdout.index("running the embedding plays")


@pytest.mark.skipif(not (VENV_BIN / "ansible-playbook").exists(), reason="needs ansible in the venv")
def test_the_wait_for_the_driver_is_bounded_and_names_the_error(deployment, tmp_path):
    deployment[0].set_attribute("install-nvidia-driver", "True")
    bindir, _ = fake_nvidia_smi(tmp_path, failures=1000)
    result = run_gpu_boot(deployment, tmp_path, fake_pci(tmp_path), bindir, EMBEDSTACK_BOOTSTRAP_GPU_WAIT_SEC="2")
    assert result.returncode != 0
    console = (tmp_path / "console").read_text()
    assert "no working NVIDIA driver after 2 s" in console and "couldn't communicate with the NVIDIA driver" in console
    assert "running the embedding plays" not in result.stdout


@pytest.mark.skipif(not (VENV_BIN / "ansible-playbook").exists(), reason="needs ansible in the venv")
@pytest.mark.parametrize(("tier", "vendor"), [("embedding", "0x1af4"), ("index", "0x10de")])
def test_no_wait_without_an_nvidia_gpu_or_on_the_index_tier(deployment, tmp_path, tier, vendor):
    deployment[0].set_attribute("embedstack-tier", tier)
    bindir, calls = fake_nvidia_smi(tmp_path, failures=1000)
    result = run_gpu_boot(
        deployment, tmp_path, fake_pci(tmp_path, vendor=vendor), bindir, EMBEDSTACK_BOOTSTRAP_NO_DATA_DISK="1"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not calls.exists()
    assert ("not waiting for a driver" in result.stdout) == (tier == "embedding")


def test_apt_waits_for_the_dpkg_lock(deployment, tmp_path):
    """Every apt-get call carries DPkg::Lock::Timeout (apt.conf(5): how long apt waits for the dpkg
    lock instead of failing at once, as it would while a first boot's unattended-upgrades runs)."""
    metadata, gcs = deployment
    bindir, record = tmp_path / "fakebin", tmp_path / "apt-get.args"
    bindir.mkdir()
    # python3 without venv support: the bootstrap installs python3-venv with apt-get.
    (bindir / "python3").write_text("#!/bin/sh\nexit 1\n")
    (bindir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {record}\nexit 100\n')
    for name in ("python3", "apt-get"):
        (bindir / name).chmod(0o755)
    result = run_startup(metadata, gcs, tmp_path, stop_after="", PATH=f"{bindir}:/usr/local/bin:/usr/bin:/bin")
    assert result.returncode != 0
    calls = record.read_text().splitlines()
    assert calls and all(call.startswith("-o DPkg::Lock::Timeout=300 ") for call in calls), calls


@pytest.mark.skipif(not (VENV_BIN / "ansible-playbook").exists(), reason="needs ansible in the venv")
def test_on_debian_the_roles_install_the_driver_before_vllm_and_nothing_waits(deployment, tmp_path):
    """The default GPU image (debian-cloud/debian-12) has no driver and no installer of its own: the embedding
    play installs it (role nvidia_driver) before vLLM's preflight reads it, instead of a boot-time wait."""
    deployment[1].put_object(BUCKET, OBJECT, make_bundle({**VARS, "embedstack_install_nvidia_driver": True}))
    bindir, calls = fake_nvidia_smi(tmp_path, failures=1000)
    result = run_gpu_boot(deployment, tmp_path, fake_pci(tmp_path), bindir, listing="--list-hosts --list-tasks")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not calls.exists() and "the nvidia_driver role installs it" in result.stdout
    [embedding_play] = [p for p in result.stdout.split("play #") if "pattern: ['embedding']" in p]
    install, check = (embedding_play.index(t) for t in ("Install NVIDIA's driver", "NVIDIA driver floor"))
    assert install < check


# -- a GPU VM whose driver fails (issue 23, section 3) ------------------------------------------------

# What the embedding play means to the bootstrap, run by the real ansible-playbook: the nvidia_driver role either
# succeeds, or fails after writing the reason to nvidia_driver_reboot_flag (a new kernel, nouveau, a module that does
# not match the running kernel: tests/ansible/test_nvidia_driver.py proves the role does), or fails without it. The
# test decides per boot through `outcome_file`; the failed mode (embedstack_boot_failed) stands for the
# embedding_service role, which starts the gateway whose /health autohealing probes (marker `gateway_file`).
OUTCOME_SITE_YML = """---
- name: Stand in for the embedding play (tests/gcp)
  hosts: all
  gather_facts: false
  vars:
    outcome: "{{ lookup('ansible.builtin.file', outcome_file) | trim }}"
    failed_mode: "{{ embedstack_boot_failed | default(false) | bool }}"
  tasks:
    - name: Record the run
      ansible.builtin.shell: >-
        echo "{{ 'failed-mode' if failed_mode else outcome }}
        wait={{ embedding_service_wait_for_ready | default(true) | bool }}" >> {{ runs_file | quote }}
      changed_when: true
    - name: Start the gateway alone
      ansible.builtin.copy:
        content: "{{ embedstack_boot_failure_file | default('') }}"
        dest: "{{ gateway_file }}"
        mode: "0644"
      when: failed_mode | bool
    - name: Ask for a reboot as the nvidia_driver role does
      ansible.builtin.copy:
        content: "the headers of the running kernel 6.1.0-28-cloud-amd64 are not in the archive\\n"
        dest: "{{ reboot_flag }}"
        mode: "0644"
      when: not failed_mode | bool and outcome == 'reboot'
    - name: Fail as the role does
      ansible.builtin.fail:
        msg: "nvidia-smi failed on this host (exit 9): NVIDIA-SMI has failed because it couldn't communicate"
      when: not failed_mode | bool and outcome in ['reboot', 'fail']
"""


class GpuVm:
    """One GPU VM of the group: its boot disk is a fresh ROOT; `boot()` runs startup.sh as GCE does at every boot."""

    def __init__(self, deployment, tmp_path: Path, name: str):
        self.metadata, self.gcs = deployment
        self.disk = tmp_path / name
        self.disk.mkdir()
        self.run_dir = tmp_path / "run"  # /run: emptied at every boot
        self.outcome = tmp_path / "outcome"
        self.reboots = 0
        self.boots: list[subprocess.CompletedProcess] = []

    @property
    def runs(self) -> list[str]:
        runs = self.disk / "opt" / "runs"
        return runs.read_text().splitlines() if runs.exists() else []

    @property
    def gateway_up(self) -> bool:
        return (self.disk / "opt" / "gateway").exists()

    def boot(self) -> subprocess.CompletedProcess:
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir()
        rebooted = self.disk / "reboot-requested"
        rebooted.unlink(missing_ok=True)
        result = run_startup(
            self.metadata,
            self.gcs,
            self.disk,
            stop_after="",
            EMBEDSTACK_BOOTSTRAP_ANSIBLE_VENV=str(VENV_BIN.parent),
            EMBEDSTACK_BOOTSTRAP_REBOOT=f"touch {rebooted}",
            EMBEDSTACK_BOOTSTRAP_REBOOT_FLAG=str(self.run_dir / "nvidia-driver-reboot-required"),
            EMBEDSTACK_BOOTSTRAP_RETRY_SEC="0",
            EMBEDSTACK_BOOTSTRAP_NO_DATA_DISK="1",  # the index tier's disk
        )
        self.boots.append(result)
        if rebooted.exists():
            self.reboots += 1
        return result

    def boot_until_settled(self, limit: int = 4) -> None:
        """Boot, and boot again while the script asked for a reboot."""
        for _ in range(limit):
            self.boot()
            if not (self.disk / "reboot-requested").exists():
                return


@pytest.fixture
def gpu_group(deployment, tmp_path):
    """The group's bundle with the stand-in play; `make(name)` creates a VM (a fresh disk), `outcome(...)` sets what
    the driver does on the boots that follow."""
    metadata, gcs = deployment
    metadata.set_attribute("enable-guest-attributes", "TRUE")  # pulumi/components/embedding_tier.py sets it
    outcome = tmp_path / "outcome"
    variables = {
        **VARS,
        "outcome_file": str(outcome),
        # on the VM's own disk: the bundle is unpacked at <root>/bundle/<sha>/
        "runs_file": "{{ playbook_dir }}/../../../runs",
        "gateway_file": "{{ playbook_dir }}/../../../gateway",
        "reboot_flag": str(tmp_path / "run" / "nvidia-driver-reboot-required"),
    }
    gcs.put_object(BUCKET, OBJECT, make_bundle(variables, OUTCOME_SITE_YML))

    class Group:
        def __init__(self) -> None:
            self.vms: list[GpuVm] = []

        def make(self, name: str) -> GpuVm:
            vm = GpuVm(deployment, tmp_path, name)
            self.vms.append(vm)
            return vm

        def outcome(self, value: str) -> None:
            outcome.write_text(value + "\n")

    return Group()


needs_ansible = pytest.mark.skipif(not (VENV_BIN / "ansible-playbook").exists(), reason="needs ansible in the venv")


@needs_ansible
def test_the_single_reboot_follows_the_roles_request_and_a_second_failure_gives_up_for_good(gpu_group, tmp_path):
    """Debian's cloud kernel has no DRM, so nouveau never loads there: the reboot keys on the role's own outcome. A
    driver that still fails after it leaves the VM up, failed, saying why on the console, in the guest attribute and
    (through the gateway, started alone) in /ready; its next boots do not try again."""
    metadata = gpu_group.make("vm").metadata
    vm = gpu_group.vms[0]
    gpu_group.outcome("reboot")
    first = vm.boot()
    assert first.returncode == 0 and vm.reboots == 1, first.stdout + first.stderr
    assert "the nvidia_driver role needs a reboot: the headers of the running kernel" in first.stdout
    second = vm.boot()
    assert second.returncode != 0 and vm.reboots == 1, second.stdout
    console = (vm.disk / "console").read_text()
    assert "BOOT FAILED for good" in console and "still after the one reboot" in console
    reason = (vm.disk / "opt" / "state" / "boot-failure").read_text()
    assert "headers of the running kernel" in reason
    assert metadata.guest_attributes["embedstack/boot-failure"] == reason.strip()
    # The gateway alone, told not to wait for /ready (which now answers 503 with the reason), and where to read it.
    assert vm.runs == ["reboot wait=True", "reboot wait=True", "failed-mode wait=False"]
    assert vm.gateway_up
    assert (vm.disk / "opt" / "gateway").read_text() == str(vm.disk / "opt" / "state" / "boot-failure")
    # A reboot of the failed VM (an operator's, or GCE's) reports again and changes nothing.
    third = vm.boot()
    assert third.returncode != 0 and vm.reboots == 1 and len(vm.runs) == 3, third.stdout
    assert "boot failed for good earlier" in third.stdout and "BOOT FAILED for good" in third.stdout


@needs_ansible
def test_a_failure_no_reboot_fixes_is_tried_once_more_then_given_up(gpu_group):
    vm = gpu_group.make("vm")
    gpu_group.outcome("fail")
    result = vm.boot()
    assert result.returncode != 0 and vm.reboots == 0, result.stdout
    assert vm.runs == ["fail wait=True", "fail wait=True", "failed-mode wait=False"]
    assert "trying once more" in result.stdout
    reason = (vm.disk / "opt" / "state" / "boot-failure").read_text()
    assert "failed twice" in reason and "nvidia-smi failed on this host (exit 9)" in reason, reason


@needs_ansible
def test_a_driver_that_loads_after_the_reboot_serves_and_clears_the_count(gpu_group):
    vm = gpu_group.make("vm")
    gpu_group.outcome("reboot")
    vm.boot()
    gpu_group.outcome("ok")
    result = vm.boot()
    assert result.returncode == 0 and vm.reboots == 1, result.stdout
    assert not (vm.disk / "opt" / "state" / "boot-failure").exists() and not vm.gateway_up
    assert not (vm.disk / "opt" / "state" / "failed-runs").exists()


@needs_ansible
def test_a_driver_that_never_loads_leaves_one_failed_vm_instead_of_a_recreation_loop(gpu_group):
    """The managed instance group, as pulumi/components/embedding_tier.py configures it: autohealing probes the
    gateway's /health and recreates (a new VM, a new boot disk) a VM that does not answer once its initial delay is
    over. Before, every boot of such a VM ended in `die` with nothing listening, so each VM was recreated about every
    30 minutes, a GPU billed each time, for ever; here six VM lifetimes stand for "for ever"."""
    gpu_group.outcome("reboot")
    for lifetime in range(6):
        vm = gpu_group.make(f"vm-{lifetime}")
        vm.boot_until_settled()
        if vm.gateway_up:  # /health answers: autohealing keeps the VM
            break
    recreated = len(gpu_group.vms) - 1
    assert recreated == 0, f"autohealing recreated the VM {recreated} times: {gpu_group.vms[-1].boots[-1].stdout}"
    [vm] = gpu_group.vms
    assert vm.reboots == 1 and len(vm.boots) == 2
    assert "embedstack/boot-failure" in vm.metadata.guest_attributes


@needs_ansible
def test_the_index_vm_keeps_retrying_at_each_boot(gpu_group):
    """No group recreates the Qdrant VM and its disk holds the index: a failure there is never made final."""
    vm = gpu_group.make("index-vm")
    vm.metadata.set_attribute("embedstack-tier", "index")
    gpu_group.outcome("fail")
    for _ in range(2):
        result = vm.boot()
        assert result.returncode != 0 and "the next boot tries again" in result.stdout, result.stdout
    assert vm.runs == ["fail wait=True"] * 4
    assert not (vm.disk / "opt" / "state" / "boot-failure").exists() and not vm.metadata.guest_attributes


@needs_ansible
def test_a_play_that_dies_without_a_task_failure_is_still_reported(gpu_group):
    """ansible-playbook can fail before any task (a broken bundle): the report names its last line."""
    vm = gpu_group.make("vm")
    gpu_group.outcome("ok")
    result = vm.boot()
    assert result.returncode == 0
    (vm.disk / "opt" / "bundle" / "current" / "ansible" / "site.yml").write_text("- hosts: all\n  tasks: [\n")
    (vm.disk / "opt" / "bundle" / "current" / "ansible" / "site.yml").chmod(0o644)
    result = vm.boot()
    assert result.returncode != 0 and "BOOT FAILED for good" in result.stdout, result.stdout[-2000:]
    assert (vm.disk / "opt" / "state" / "boot-failure").read_text().strip(), "no reason recorded"
