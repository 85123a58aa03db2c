"""Stack configuration: `pulumi config` values → one frozen, validated Settings.

Pulumi hands every value over as text and its mocks accept anything, so every allowed value is
checked here. Every failure raises ConfigError, whose message names the key and what is allowed.
`parse()` is pure (tests call it directly); `load()` reads the current stack.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from catalog import (
    DEFAULT_IMAGE_FAMILY,
    DEFAULT_IMAGE_PROJECT,
    DISK_TYPES,
    DISK_TYPES_BY_FAMILY,
    DLVM_IMAGE_FAMILY,
    DLVM_IMAGE_PROJECT,
    GPUS,
    MIN_NVIDIA_DRIVER,
    MODELS,
    QDRANT_MACHINE_FAMILIES,
    Gpu,
    Model,
)

NAMESPACE = "embedstack"
MAX_TARGET_SIZE = 10

# Every plain (non-secret) key with its default; None means required.
DEFAULTS: dict[str, Any] = {
    "gpu": "l4",
    "machine_type": "",  # "" → the GPU's default machine type
    "zone": "us-central1-a",
    "region": "",  # "" → the zone's region
    "gpu_zones": [],  # [] → [zone]
    "target_size": 1,
    "model": "qwen3-embedding-0.6b",
    "image_project": DEFAULT_IMAGE_PROJECT,
    "image_family": DEFAULT_IMAGE_FAMILY,
    "boot_disk_gb": 150,
    "admin_cidrs": [],
    "client_cidrs": None,
    "allow_public_clients": False,
    "allow_iap_ssh": True,
    "network": "",  # "" → create one
    "subnetwork": "",
    "subnet_cidr": "10.42.0.0/24",
    "create_nat": True,
    "public_ip": False,
    "qdrant_public_ip": False,
    "qdrant_machine_type": "e2-standard-2",
    "qdrant_disk_gb": 50,
    "qdrant_disk_type": "pd-balanced",
    "qdrant_disk_snapshot": "",  # "" → a new, empty data disk; else the snapshot it is created from
    "qdrant_image": "debian-cloud/debian-12",
    "qdrant_deb_url": "",  # "" → the qdrant role's pinned release; else this .deb (amd64) instead
    "qdrant_deb_sha256": "",
    "snapshot_start_time": "03:00",
    "snapshot_retention_days": 14,
    "autoheal_initial_delay_sec": 1800,
    # HTTPS with the stack's own CA on the gateway, and on Qdrant when qdrant_public_ip is true
    "tls": True,
    "tls_dns_names": [],  # extra DNS names in the server certificates, beside their addresses
    "allow_plaintext": False,  # tls false serves API keys and code in the clear: only on request
}
# Secrets: `pulumi config set --secret`; each one left unset is generated (pulumi_random).
SECRET_KEYS: tuple[str, ...] = ("gateway_api_key", "qdrant_api_key", "vllm_api_key")
KNOWN_KEYS: frozenset[str] = frozenset(DEFAULTS) | frozenset(SECRET_KEYS)

# A Compute Engine resource name (RFC 1035 label, at most 63 characters).
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_REGION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_ZONE_RE = re.compile(r"^([a-z]+-[a-z]+[0-9]+)-[a-z]$")
_IMAGE_RE = re.compile(r"^[a-z][-a-z0-9]*/[a-z][-a-z0-9]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HOUR_RE = re.compile(r"^([01][0-9]|2[0-3]):00$")
_PROJECT_RE = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
_LABEL_BAD_RE = re.compile(r"[^a-z0-9_-]")
_DLVM_DRIVER_RE = re.compile(r"-nvidia-([0-9]+)$")
# <family>-<type>-<vcpus>, of a family Qdrant may run on.
_QDRANT_MACHINE_RE = re.compile(rf"^({'|'.join(QDRANT_MACHINE_FAMILIES)})-[a-z]+-[0-9]+$")
# A snapshot's name, or its full path in a project.
_SNAPSHOT_RE = re.compile(
    r"^(projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/global/snapshots/)?[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
)
_DEB_URL_RE = re.compile(r"^https://[^\s]+\.deb$")
# A host name (RFC 1123 labels, lowercase, at most 253 characters); no wildcards, no trailing dot.
_DNS_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# The longest stack stem kept as it is; "es-<stem>" then leaves room for every suffix the
# program and Pulumi's auto-naming add (see resource_stem).
MAX_STEM = 21


class ConfigError(ValueError):
    """A stack config value that is missing or not allowed; the message names key and allowed values."""


@dataclass(frozen=True)
class Settings:
    stack: str
    project: str
    gpu: Gpu
    machine_type: str
    region: str
    zone: str
    gpu_zones: tuple[str, ...]
    target_size: int
    model: Model
    image_project: str
    image_family: str
    boot_disk_gb: int
    admin_cidrs: tuple[str, ...]
    client_cidrs: tuple[str, ...]
    allow_public_clients: bool
    allow_iap_ssh: bool
    network: str
    subnetwork: str
    subnet_cidr: str
    create_nat: bool
    public_ip: bool
    qdrant_public_ip: bool
    qdrant_machine_type: str
    qdrant_disk_gb: int
    qdrant_disk_type: str
    qdrant_disk_snapshot: str
    qdrant_image: str
    qdrant_deb_url: str
    qdrant_deb_sha256: str
    snapshot_start_time: str
    snapshot_retention_days: int
    autoheal_initial_delay_sec: int
    tls: bool
    tls_dns_names: tuple[str, ...]
    allow_plaintext: bool

    @property
    def create_network(self) -> bool:
        return not self.network

    @property
    def qdrant_tls(self) -> bool:
        """Qdrant serves HTTPS when it has a public address; inside the VPC (or over the IAP tunnel) it stays HTTP."""
        return self.tls and self.qdrant_public_ip

    @property
    def image_installs_driver(self) -> bool:
        """A Deep Learning VM image installs its NVIDIA driver at first boot; elsewhere the nvidia_driver role does."""
        return self.image_project == DLVM_IMAGE_PROJECT

    @property
    def labels(self) -> dict[str, str]:
        """Labels on everything labelable: GCE label values are lowercase, digits, - and _."""
        return {"app": "embedstack", "stack": label_value(self.stack)}


def label_value(text: str) -> str:
    return _LABEL_BAD_RE.sub("-", text.lower())[:63] or "default"


def resource_stem(stack: str) -> str:
    """The part of every resource name that stands for the stack: valid in a GCE name, one per stack.

    Pulumi stack names may hold upper case, `_` and `.`, which GCE names may not
    (`[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters). A stack name that is already a valid
    name of at most MAX_STEM characters is used as it is (the committed `l4` and `a100`); any
    other is cleaned and gets 6 hex of sha256(stack name), so `prod_l4`, `prod.l4` and `prod-l4`
    give `prod-l4-<hash>`, `prod-l4-<other hash>` and `prod-l4`: valid, and never the same.
    """
    if len(stack) <= MAX_STEM and _NAME_RE.match(stack):
        return stack
    digest = hashlib.sha256(stack.encode()).hexdigest()[:6]
    clean = re.sub(r"[^a-z0-9]+", "-", stack.lower()).strip("-")[: MAX_STEM - 7].strip("-")
    return f"{clean}-{digest}" if clean else f"s-{digest}"


def _key(name: str) -> str:
    return f"{NAMESPACE}:{name}"


def _allowed(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def _text(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if value is None:
        default = DEFAULTS[name]
        if default is None:
            raise ConfigError(f"{_key(name)} is required; set it with `pulumi config set {name} <value>`")
        return str(default)
    if not isinstance(value, str):
        raise ConfigError(f"{_key(name)} must be text, got {value!r}")
    return value.strip()


def _bool(raw: Mapping[str, Any], name: str) -> bool:
    value = raw.get(name, DEFAULTS[name])
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ConfigError(f"{_key(name)} {value!r} is not a boolean; allowed: true, false")


def _int(raw: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = raw.get(name, DEFAULTS[name])
    try:
        number = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise ConfigError(f"{_key(name)} {value!r} is not allowed; allowed: an integer from {low} to {high}")
    return number


def _list(raw: Mapping[str, Any], name: str) -> list[str]:
    value = raw.get(name)
    if value is None:
        default = DEFAULTS[name]
        if default is None:
            raise ConfigError(
                f"{_key(name)} is required; allowed: a list, e.g. `pulumi config set --path '{name}[0]' <value>`"
            )
        return list(default)
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v.strip()]
        except json.JSONDecodeError:
            raise ConfigError(f"{_key(name)} {value!r} is not a list; allowed: a YAML/JSON list of text") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{_key(name)} {value!r} is not a list of text; allowed: a YAML/JSON list of text")
    return [v.strip() for v in value]


def _choice(raw: Mapping[str, Any], name: str, allowed: Any) -> str:
    value = _text(raw, name)
    if value not in allowed:
        raise ConfigError(f"{_key(name)} {value!r} is not allowed; allowed: {_allowed(allowed)}")
    return value


def _cidrs(raw: Mapping[str, Any], name: str, allow_any: bool) -> tuple[str, ...]:
    networks: list[str] = []
    for text in _list(raw, name):
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise ConfigError(
                f"{_key(name)} entry {text!r} is not a network ({exc}); allowed: IPv4 networks such as 203.0.113.7/32"
            ) from None
        if net.version != 4:
            raise ConfigError(f"{_key(name)} entry {text!r} is IPv6; allowed: IPv4 networks such as 203.0.113.0/24")
        if net.prefixlen == 0 and not allow_any:
            hint = (
                "set embedstack:allow_public_clients to true to open the service ports to everyone"
                if name == "client_cidrs"
                else "use embedstack:allow_iap_ssh (IAP tunnel) instead of opening SSH to everyone"
            )
            raise ConfigError(
                f"{_key(name)} entry {text!r} opens to the whole internet; "
                f"allowed: networks narrower than /0 such as 203.0.113.7/32, or {hint}"
            )
        networks.append(str(net))
    _distinct(name, networks, "network")
    return tuple(networks)


def _zones_text(gpu: Gpu, region: str | None = None) -> str:
    zones = [z for z in gpu.zones if region is None or z.rsplit("-", 1)[0] == region]
    return _allowed(zones) if zones else f"none in {region} (regions with {gpu.key}: {_allowed(_regions(gpu))})"


def _regions(gpu: Gpu) -> list[str]:
    return sorted({z.rsplit("-", 1)[0] for z in gpu.zones})


def _matching(
    pattern: re.Pattern[str], name: str, value: str, allowed: str, problem: str = "is not allowed", entry: bool = False
) -> str:
    """`value` when `pattern` matches it; otherwise a ConfigError naming the key, the value and what is allowed."""
    if not pattern.match(value):
        raise ConfigError(f"{_key(name)}{' entry' if entry else ''} {value!r} {problem}; allowed: {allowed}")
    return value


def _distinct(name: str, values: Sequence[str], noun: str) -> None:
    if len(set(values)) != len(values):
        raise ConfigError(f"{_key(name)} {list(values)!r} lists a {noun} twice; allowed: distinct {noun}s")


def parse(raw: Mapping[str, Any], stack: str, project: str) -> Settings:
    """Validate raw config (key without namespace → text, or already-typed values) into Settings.

    `project` is the provider's gcp:project, which every project-scoped resource names.
    """
    _check_project(project)
    _check_known_keys(raw)
    placement = _placement(raw)
    # Sections run in this order, so a config with several mistakes always reports the same one first.
    fields = {
        **placement,
        "model": _model(raw, placement["gpu"]),
        **_access(raw),
        **_network(raw, placement["region"]),
        **_images_and_qdrant_vm(raw),
        **_qdrant_release(raw),
        "snapshot_start_time": _matching(
            _HOUR_RE, "snapshot_start_time", _text(raw, "snapshot_start_time"), "a whole hour in UTC, 00:00 to 23:00"
        ),
        **_tls(raw),
        **_sizes_and_switches(raw),
    }
    return Settings(stack=stack, project=project, **fields)


def _check_project(project: str) -> None:
    if not _PROJECT_RE.match(project or ""):
        raise ConfigError(
            f"gcp:project {project!r} is not a project id; allowed: 6-30 lowercase letters, digits and -, "
            "set with `pulumi config set gcp:project <project id>`"
        )


def _check_known_keys(raw: Mapping[str, Any]) -> None:
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"{_key(unknown[0])} is not a known key; allowed: {_allowed(_key(k) for k in sorted(KNOWN_KEYS))}"
        )


def _placement(raw: Mapping[str, Any]) -> dict[str, Any]:
    """gpu, machine_type, zone, region and gpu_zones: each checked against the ones before it."""
    gpu = GPUS[_choice(raw, "gpu", GPUS)]
    machine_type = _text(raw, "machine_type") or gpu.default_machine_type
    if machine_type not in gpu.machine_types:
        carriers = [g.key for g in GPUS.values() if machine_type in g.machine_types]
        problem = f"carries gpu {carriers[0]!r}, not {gpu.key!r}" if carriers else f"does not carry gpu {gpu.key!r}"
        raise ConfigError(
            f"{_key('machine_type')} {machine_type!r} {problem}; allowed for {gpu.key}: {_allowed(gpu.machine_types)}"
        )

    zone = _text(raw, "zone")
    match = _ZONE_RE.match(zone)
    if not match or zone not in gpu.zones:
        raise ConfigError(
            f"{_key('zone')} {zone!r} is not a known zone offering gpu {gpu.key!r}; "
            f"allowed for {gpu.key}: {_zones_text(gpu)}"
        )
    region = _text(raw, "region") or match.group(1)
    if not _REGION_RE.match(region) or region not in _regions(gpu):
        raise ConfigError(
            f"{_key('region')} {region!r} is not a known region offering gpu {gpu.key!r}; "
            f"allowed for {gpu.key}: {_allowed(_regions(gpu))}"
        )
    if match.group(1) != region:
        raise ConfigError(
            f"{_key('zone')} {zone!r} is not in {_key('region')} {region!r}; "
            f"allowed zones for {gpu.key} in {region}: {_zones_text(gpu, region)}"
        )
    gpu_zones = tuple(_list(raw, "gpu_zones")) or (zone,)
    for gz in gpu_zones:
        if gz not in gpu.zones or not gz.startswith(region + "-"):
            raise ConfigError(
                f"{_key('gpu_zones')} entry {gz!r} is not a zone of {region} offering gpu {gpu.key!r}; "
                f"allowed: {_zones_text(gpu, region)}"
            )
    _distinct("gpu_zones", gpu_zones, "zone")
    return {"gpu": gpu, "machine_type": machine_type, "zone": zone, "region": region, "gpu_zones": gpu_zones}


def _model(raw: Mapping[str, Any], gpu: Gpu) -> Model:
    model = MODELS.get(_text(raw, "model"))
    if model is None:
        raise ConfigError(f"{_key('model')} {_text(raw, 'model')!r} is not a served model; allowed: {_allowed(MODELS)}")
    if model.min_gpu_memory_gb > gpu.memory_gb:
        fits = [m for m in MODELS.values() if m.min_gpu_memory_gb <= gpu.memory_gb]
        raise ConfigError(
            f"{_key('model')} {model.id!r} needs {model.min_gpu_memory_gb} GB of GPU memory, {gpu.key} has "
            f"{gpu.memory_gb}; allowed for {gpu.key}: {_allowed(m.id for m in fits)}"
        )
    return model


def _access(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Who may reach the service ports and who may log in."""
    allow_public_clients = _bool(raw, "allow_public_clients")
    allow_iap_ssh = _bool(raw, "allow_iap_ssh")
    admin_cidrs = _cidrs(raw, "admin_cidrs", allow_any=False)
    client_cidrs = _cidrs(raw, "client_cidrs", allow_any=allow_public_clients)
    if not client_cidrs:
        raise ConfigError(
            f"{_key('client_cidrs')} is empty; allowed: one or more IPv4 networks such as 203.0.113.7/32 "
            "(the addresses Roo Code and other clients connect from)"
        )
    if not admin_cidrs and not allow_iap_ssh:
        raise ConfigError(
            f"{_key('admin_cidrs')} is empty and {_key('allow_iap_ssh')} is false, so nobody could log in; "
            "allowed: one or more IPv4 networks such as 203.0.113.7/32, or allow_iap_ssh true"
        )
    return {
        "admin_cidrs": admin_cidrs,
        "client_cidrs": client_cidrs,
        "allow_public_clients": allow_public_clients,
        "allow_iap_ssh": allow_iap_ssh,
    }


def _network(raw: Mapping[str, Any], region: str) -> dict[str, Any]:
    network = _text(raw, "network")
    if network == "create":
        network = ""
    subnetwork = _text(raw, "subnetwork")
    if network:
        _matching(
            _NAME_RE,
            "network",
            network,
            "empty (create one) or the name of an existing VPC network (lowercase letters, digits and -)",
            problem="is not a network name",
        )
        _matching(
            _NAME_RE,
            "subnetwork",
            subnetwork,
            f"the name of a subnetwork of network {network!r} in {region} "
            f"(required when {_key('network')} names an existing network)",
            problem="is not a subnetwork name",
        )
    subnet_cidr = _text(raw, "subnet_cidr")
    try:
        subnet = ipaddress.ip_network(subnet_cidr, strict=True)
        if subnet.version != 4 or not subnet.is_private or not 8 <= subnet.prefixlen <= 29:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"{_key('subnet_cidr')} {subnet_cidr!r} is not allowed; allowed: a private IPv4 network from /8 to /29, "
            "such as 10.42.0.0/24"
        ) from None
    return {"network": network, "subnetwork": subnetwork, "subnet_cidr": str(subnet)}


def _images_and_qdrant_vm(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Both tiers' boot images and the Qdrant VM and disk, one section: their checks interleave (the NVIDIA driver
    of image_family is checked after Qdrant's image and disk), and that order decides which mistake is reported."""
    qdrant_machine_type = _matching(
        _QDRANT_MACHINE_RE,
        "qdrant_machine_type",
        _text(raw, "qdrant_machine_type"),
        f"a general-purpose <family>-<type>-<vcpus> machine type of family {_allowed(QDRANT_MACHINE_FAMILIES)}",
    )
    family = qdrant_machine_type.split("-", 1)[0]
    image_family = _text(raw, "image_family")
    image_project = _text(raw, "image_project")
    for name, value in (("image_family", image_family), ("image_project", image_project)):
        _matching(_NAME_RE, name, value, f"an image {name.split('_')[1]} name (lowercase letters, digits and -)")
    qdrant_image = _matching(
        _IMAGE_RE, "qdrant_image", _text(raw, "qdrant_image"), "<project>/<image family> such as debian-cloud/debian-12"
    )
    qdrant_disk_type = _choice(raw, "qdrant_disk_type", DISK_TYPES)
    fitting = DISK_TYPES_BY_FAMILY[family]
    if qdrant_disk_type not in fitting:
        raise ConfigError(
            f"{_key('qdrant_disk_type')} {qdrant_disk_type!r} does not fit {_key('qdrant_machine_type')} "
            f"{qdrant_machine_type!r}: GCP refuses that disk type on the {family.upper()} series; "
            f"allowed with {qdrant_machine_type}: {_allowed(fitting)}"
        )
    qdrant_disk_snapshot = _text(raw, "qdrant_disk_snapshot")
    if qdrant_disk_snapshot:
        _matching(
            _SNAPSHOT_RE,
            "qdrant_disk_snapshot",
            qdrant_disk_snapshot,
            "empty, a snapshot name, or projects/<project>/global/snapshots/<name>",
        )
    driver = _DLVM_DRIVER_RE.search(image_family)
    if image_project == DLVM_IMAGE_PROJECT and driver and int(driver.group(1)) < MIN_NVIDIA_DRIVER:
        raise ConfigError(
            f"{_key('image_family')} {image_family!r} carries NVIDIA driver {driver.group(1)}, below the "
            f"{MIN_NVIDIA_DRIVER} that the pinned vLLM (CUDA 13) needs; allowed: a family with driver "
            f"{MIN_NVIDIA_DRIVER} or newer, such as {DLVM_IMAGE_FAMILY}"
        )
    return {
        "image_project": image_project,
        "image_family": image_family,
        "qdrant_machine_type": qdrant_machine_type,
        "qdrant_disk_type": qdrant_disk_type,
        "qdrant_disk_snapshot": qdrant_disk_snapshot,
        "qdrant_image": qdrant_image,
    }


def _qdrant_release(raw: Mapping[str, Any]) -> dict[str, str]:
    """The qdrant role's pinned release, or another .deb with its checksum."""
    qdrant_deb_url = _text(raw, "qdrant_deb_url")
    if qdrant_deb_url:
        _matching(
            _DEB_URL_RE,
            "qdrant_deb_url",
            qdrant_deb_url,
            "empty (the pinned Qdrant release of the qdrant role) or an https URL of a Qdrant release .deb (amd64)",
        )
    qdrant_deb_sha256 = _text(raw, "qdrant_deb_sha256").lower()
    if qdrant_deb_url:
        _matching(
            _SHA256_RE,
            "qdrant_deb_sha256",
            qdrant_deb_sha256,
            f"64 hex digits (sha256sum of the .deb at {_key('qdrant_deb_url')})",
        )
    if qdrant_deb_sha256 and not qdrant_deb_url:
        raise ConfigError(
            f"{_key('qdrant_deb_sha256')} is set without {_key('qdrant_deb_url')}; allowed: both (another Qdrant "
            "release) or neither (the qdrant role's pinned release)"
        )
    return {"qdrant_deb_url": qdrant_deb_url, "qdrant_deb_sha256": qdrant_deb_sha256}


def _tls(raw: Mapping[str, Any]) -> dict[str, Any]:
    tls = _bool(raw, "tls")
    allow_plaintext = _bool(raw, "allow_plaintext")
    if not tls and not allow_plaintext:
        raise ConfigError(
            f"{_key('tls')} is false, so the gateway's public load-balancer address (and Qdrant's, with "
            f"{_key('qdrant_public_ip')}) would carry API keys and code in plain HTTP; allowed: {_key('tls')} true "
            f"(the default), or {_key('allow_plaintext')} true to accept plain HTTP"
        )
    tls_dns_names = tuple(n.lower() for n in _list(raw, "tls_dns_names"))
    for name in tls_dns_names:
        _matching(
            _DNS_RE,
            "tls_dns_names",
            name,
            "host names such as embed.example.com (lowercase letters, digits, - and ., no wildcard)",
            problem="is not a DNS name",
            entry=True,
        )
    _distinct("tls_dns_names", tls_dns_names, "name")
    return {"tls": tls, "tls_dns_names": tls_dns_names, "allow_plaintext": allow_plaintext}


def _sizes_and_switches(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The values that depend on no other, checked last as they always were."""
    return {
        "target_size": _int(raw, "target_size", 1, MAX_TARGET_SIZE),
        "boot_disk_gb": _int(raw, "boot_disk_gb", 100, 4096),
        "create_nat": _bool(raw, "create_nat"),
        "public_ip": _bool(raw, "public_ip"),
        "qdrant_public_ip": _bool(raw, "qdrant_public_ip"),
        "qdrant_disk_gb": _int(raw, "qdrant_disk_gb", 10, 65536),
        "snapshot_retention_days": _int(raw, "snapshot_retention_days", 1, 365),
        "autoheal_initial_delay_sec": _int(raw, "autoheal_initial_delay_sec", 0, 3600),
    }


@dataclass(frozen=True)
class Secrets:
    """Secret config values the user set (Outputs marked secret); None where the program generates one."""

    gateway_api_key: pulumi.Output[str] | None
    qdrant_api_key: pulumi.Output[str] | None
    vllm_api_key: pulumi.Output[str] | None


def _all_config_keys() -> set[str]:
    # Whatever the engine handed over: the environment bag and what set_all_config stored.
    from pulumi.runtime import config as runtime_config

    keys = set(runtime_config.get_config_env()) | set(runtime_config.CONFIG.get())
    return {k.split(":", 1)[1] for k in keys if k.startswith(NAMESPACE + ":")}


def load() -> tuple[Settings, Secrets]:
    """Read and validate the current stack's config."""
    from pulumi.runtime import config as runtime_config

    cfg = pulumi.Config(NAMESPACE)
    present = _all_config_keys()
    # Unknown keys are kept so parse() can name a typo; known ones may also come from PULUMI_CONFIG_<KEY>.
    raw: dict[str, Any] = {name: cfg.get(name) or "" for name in present - set(SECRET_KEYS)}
    for name in DEFAULTS:
        value = cfg.get(name)
        if value is not None:
            raw[name] = value
    secret_keys = set(runtime_config.get_config_secret_keys_env())
    for name in SECRET_KEYS:
        secret = runtime_config.is_config_secret(_key(name)) or _key(name) in secret_keys
        if name in present and not secret:
            raise ConfigError(
                f"{_key(name)} is stored in plain text; allowed: a secret, set with "
                f"`pulumi config set --secret {name} <value>`, or unset to have one generated"
            )
    settings = parse(raw, pulumi.get_stack(), pulumi.Config("gcp").get("project") or "")
    secrets = Secrets(**{name: cfg.get_secret(name) for name in SECRET_KEYS})
    return settings, secrets
