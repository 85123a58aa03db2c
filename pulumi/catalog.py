"""The fixed tables config.py validates against: GPUs, their machine types and zones, models.

Each table is small on purpose and documents where it comes from. When Google adds a zone or a
machine type, edit the table: config.py refuses anything that is not listed here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Gpu:
    key: str  # the value of embedstack:gpu
    accelerator: str  # GCE accelerator type (what `gcloud compute accelerator-types list` shows)
    memory_gb: int  # per GPU
    machine_types: tuple[str, ...]  # accelerator-optimized types that carry this GPU
    default_machine_type: str
    # Zones offering the GPU, from Google's "GPU regions and zones" page (checked November 2026;
    # confirm with `gcloud compute accelerator-types list --filter="name=<accelerator>"`).
    zones: tuple[str, ...]


# For A2 and G2 machine types Compute Engine attaches the GPUs itself: the machine type is the
# whole GPU request and an instance template must not list guest accelerators for them.
GPUS: dict[str, Gpu] = {
    gpu.key: gpu
    for gpu in (
        Gpu(
            key="l4",
            accelerator="nvidia-l4",
            memory_gb=24,
            machine_types=tuple(f"g2-standard-{n}" for n in (4, 8, 12, 16, 24, 32, 48, 96)),
            default_machine_type="g2-standard-8",
            zones=(
                "asia-east1-a",
                "asia-east1-c",
                "asia-northeast1-a",
                "asia-northeast1-c",
                "asia-south1-a",
                "asia-south1-b",
                "asia-southeast1-a",
                "asia-southeast1-b",
                "asia-southeast1-c",
                "europe-west1-b",
                "europe-west1-c",
                "europe-west2-a",
                "europe-west2-b",
                "europe-west3-a",
                "europe-west3-b",
                "europe-west4-a",
                "europe-west4-b",
                "europe-west4-c",
                "us-central1-a",
                "us-central1-b",
                "us-central1-c",
                "us-east1-b",
                "us-east1-c",
                "us-east1-d",
                "us-east4-a",
                "us-east4-c",
                "us-west1-a",
                "us-west1-b",
                "us-west1-c",
                "us-west4-a",
                "us-west4-c",
            ),
        ),
        Gpu(
            key="a100-40gb",
            accelerator="nvidia-tesla-a100",
            memory_gb=40,
            machine_types=tuple(f"a2-highgpu-{n}g" for n in (1, 2, 4, 8)),
            default_machine_type="a2-highgpu-1g",
            zones=(
                "asia-northeast1-a",
                "asia-northeast1-c",
                "asia-northeast3-a",
                "asia-northeast3-b",
                "asia-southeast1-b",
                "asia-southeast1-c",
                "europe-west4-a",
                "europe-west4-b",
                "me-west1-b",
                "me-west1-c",
                "us-central1-a",
                "us-central1-b",
                "us-central1-c",
                "us-central1-f",
                "us-east1-b",
                "us-west1-b",
                "us-west3-b",
                "us-west4-b",
            ),
        ),
        Gpu(
            key="a100-80gb",
            accelerator="nvidia-a100-80gb",
            memory_gb=80,
            machine_types=tuple(f"a2-ultragpu-{n}g" for n in (1, 2, 4, 8)),
            default_machine_type="a2-ultragpu-1g",
            zones=(
                "asia-southeast1-c",
                "europe-west4-a",
                "us-central1-a",
                "us-central1-c",
                "us-east4-c",
                "us-east5-b",
            ),
        ),
    )
}


# Qwen3-Embedding wants an instruction on queries and none on documents (its model card).
QWEN3_CODE_QUERY = "Instruct: Given a code search query, retrieve relevant code\nQuery:"


# GPUs per machine type (Google's "GPU machine types" page, A2 and G2 tables, checked November 2026): a2-highgpu-Ng
# and a2-ultragpu-Ng carry N; a G2 carries one L4 except g2-standard-24 (2), -48 (4) and -96 (8). The VM's boot
# unit makes one /dev/nvidiaN per GPU (vars.yml embedstack_gpu_count).
G2_GPUS: dict[int, int] = {4: 1, 8: 1, 12: 1, 16: 1, 24: 2, 32: 1, 48: 4, 96: 8}


def gpu_count(machine_type: str) -> int:
    """How many GPUs an A2 or G2 machine type carries."""
    family, _, size = machine_type.rpartition("-")
    if family in ("a2-highgpu", "a2-ultragpu") and size.endswith("g"):
        return int(size[:-1])
    if family == "g2-standard":
        return G2_GPUS[int(size)]
    raise ValueError(f"{machine_type} is not an A2 or G2 machine type")


@dataclass(frozen=True)
class Model:
    id: str  # the model id clients send (vLLM --served-model-name, the gateway's model id)
    hf_id: str  # what vLLM loads (safetensors on the Hugging Face hub)
    dimension: int  # native output dimension: what Roo Code's "model dimension" must say
    max_tokens: int  # --max-model-len and the gateway's max_tokens
    matryoshka: bool  # accepts `dimensions` (vLLM needs --hf-overrides is_matryoshka)
    min_gpu_memory_gb: int  # bf16 weights plus a working KV/activation budget
    revision: str  # the model repository commit vLLM loads (--revision): every recreated VM, same weights
    query_prefix: str = QWEN3_CODE_QUERY  # what the gateway prepends to input_type "query"


# Models the embedding tier can serve with vLLM (`--runner pooling`). Dimensions from the model
# cards (FACTS.md: Qwen3-Embedding 0.6B → 1024, 4B → 2560, 8B → 4096). The revisions are the
# commits several public deployments pin; they could not be checked against the hub from here.
MODELS: dict[str, Model] = {
    model.id: model
    for model in (
        Model(
            "qwen3-embedding-0.6b",
            "Qwen/Qwen3-Embedding-0.6B",
            1024,
            8192,
            True,
            8,
            "97b0c614be4d77ee51c0cef4e5f07c00f9eb65b3",
        ),
        Model(
            "qwen3-embedding-4b",
            "Qwen/Qwen3-Embedding-4B",
            2560,
            8192,
            True,
            16,
            "5cf2132abc99cad020ac570b19d031efec650f2b",
        ),
        Model(
            "qwen3-embedding-8b",
            "Qwen/Qwen3-Embedding-8B",
            4096,
            8192,
            True,
            24,
            "1d8ad4ca9b3dd8059ad90a75d4983776a23d44af",
        ),
    )
}

# Source ranges of Google's health checkers (load-balancing "firewall rules" page). Autohealing
# and most load balancers probe from the first two; backend-service external passthrough
# Network Load Balancers also probe from the last two.
HEALTH_CHECK_RANGES: tuple[str, ...] = ("35.191.0.0/16", "130.211.0.0/22", "209.85.152.0/22", "209.85.204.0/22")
# Identity-Aware Proxy TCP forwarding (`gcloud compute ssh --tunnel-through-iap`).
IAP_RANGE = "35.235.240.0/20"


def _client_setup():
    """The payload's client_setup.py, read from its source: this program's environment does not install the
    payload, and the gateway's port and the CA trust steps must be the ones `embedstack roo-config` states."""
    path = Path(__file__).resolve().parent.parent / "payload" / "src" / "embedstack" / "client_setup.py"
    spec = importlib.util.spec_from_file_location("embedstack_client_setup", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Ports: the gateway (clients and health checks), Qdrant REST and gRPC, SSH.
_CLIENT_SETUP = _client_setup()
GATEWAY_PORT: int = _CLIENT_SETUP.GATEWAY_PORT
trust_ca_steps = _CLIENT_SETUP.trust_ca_steps
QDRANT_PORTS: tuple[int, int] = (6333, 6334)
SSH_PORT = 22

# General-purpose machine families allowed for the Qdrant VM (no GPU, standard provisioning).
QDRANT_MACHINE_FAMILIES: tuple[str, ...] = ("e2", "n2", "n2d", "n4", "c3", "c3d", "c4", "t2d")
# Disk types the program offers for the Qdrant data disk.
DISK_TYPES: tuple[str, ...] = ("pd-balanced", "pd-ssd", "pd-standard", "hyperdisk-balanced")
# Which of those each machine series accepts, for boot and data disks alike. From Google's
# "General-purpose machine family" page (https://cloud.google.com/compute/docs/general-purpose-machines,
# "Supported disk types" of each series) and "About Hyperdisk"
# (https://cloud.google.com/compute/docs/disks/hyperdisks, "Machine series support"), checked
# November 2026: N4 and C4 take Hyperdisk only (no Persistent Disk at all); C3 and C3D take
# Hyperdisk and pd-balanced/pd-ssd but not pd-standard; E2, N2, N2D and T2D take Persistent Disk
# but not Hyperdisk Balanced. GCP refuses any other pair when the VM is created.
DISK_TYPES_BY_FAMILY: dict[str, tuple[str, ...]] = {
    "e2": ("pd-balanced", "pd-ssd", "pd-standard"),
    "n2": ("pd-balanced", "pd-ssd", "pd-standard"),
    "n2d": ("pd-balanced", "pd-ssd", "pd-standard"),
    "t2d": ("pd-balanced", "pd-ssd", "pd-standard"),
    "c3": ("pd-balanced", "pd-ssd", "hyperdisk-balanced"),
    "c3d": ("pd-balanced", "pd-ssd", "hyperdisk-balanced"),
    "n4": ("hyperdisk-balanced",),
    "c4": ("hyperdisk-balanced",),
}


def boot_disk_type(machine_type: str) -> str:
    """The boot disk type for a machine type: pd-balanced where the series takes it, else Hyperdisk Balanced."""
    allowed = DISK_TYPES_BY_FAMILY.get(machine_type.split("-", 1)[0], ("pd-balanced",))
    return "pd-balanced" if "pd-balanced" in allowed else allowed[0]


# Image of the embedding tier: Debian 12, the system every role test boots, with NVIDIA's driver
# installed by the nvidia_driver role (pulumi/README.md, "The GPU VM's operating system").
DEFAULT_IMAGE_PROJECT = "debian-cloud"
DEFAULT_IMAGE_FAMILY = "debian-12"
# The Deep Learning VM images, still allowed: they install their own driver at first boot (the
# install-nvidia-driver metadata). From Google's "Choose an image" page
# (https://cloud.google.com/deep-learning-vm/docs/images, as published April 2026): "Base-cu129
# (Python 3.12 / Ubuntu 24.04)", supported until August 4, 2028, NVIDIA driver branch 580, which
# the pinned vLLM (CUDA 13) needs. The CUDA 12.8 families ("-nvidia-570") reached end of patch and
# support on April 13, 2026.
DLVM_IMAGE_PROJECT = "deeplearning-platform-release"
DLVM_IMAGE_FAMILY = "common-cu129-ubuntu-2404-nvidia-580"
# The lowest NVIDIA driver branch the pinned vLLM's CUDA 13 runs on (CUDA 13 release notes).
MIN_NVIDIA_DRIVER = 580

# The Google APIs the program calls (FACTS.md "GCP spot VMs": a fresh project needs them):
# Compute Engine, IAM (service accounts), Cloud Resource Manager (project IAM members), Cloud
# Storage (bundle and snapshot buckets), and IAP for `gcloud compute ssh --tunnel-through-iap`.
REQUIRED_APIS: tuple[str, ...] = (
    "compute.googleapis.com",
    "iam.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "storage.googleapis.com",
    "iap.googleapis.com",
)
