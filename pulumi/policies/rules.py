"""embedstack's policies as plain pulumi_policy objects.

Importing this module builds no PolicyPack (constructing one starts a gRPC server and blocks):
__main__.py beside it does that for `pulumi preview --policy-pack pulumi/policies`, and the
tests call each policy's validate() with ResourceValidationArgs built from mocked resources.
Resource properties arrive as the engine sees them: camelCase names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

FIREWALL = "gcp:compute/firewall:Firewall"
INSTANCE = "gcp:compute/instance:Instance"
TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
REGION_TEMPLATE = "gcp:compute/regionInstanceTemplate:RegionInstanceTemplate"

# SSH, the gateway, Qdrant REST and gRPC, and vLLM (loopback only, never to be opened).
SERVICE_PORTS: tuple[int, ...] = (22, 8080, 6333, 6334, 8001)
# What `allowPublicClients: true` (mirroring embedstack:allow_public_clients) may open to all.
CLIENT_PORTS: tuple[int, ...] = (8080, 6333, 6334)
# Accelerator-optimized families: the machine type itself carries GPUs.
GPU_MACHINE_PREFIXES: tuple[str, ...] = ("a2-", "a3-", "a4-", "g2-", "g4-")
REQUIRED_LABELS: Mapping[str, str | None] = {"app": "embedstack", "stack": None}  # None: any non-empty value
# Resource types that carry labels (and so must carry ours).
LABELLED_TYPES: tuple[str, ...] = (
    INSTANCE,
    TEMPLATE,
    REGION_TEMPLATE,
    "gcp:compute/disk:Disk",
    "gcp:compute/address:Address",
    "gcp:compute/forwardingRule:ForwardingRule",
    "gcp:storage/bucket:Bucket",
)


def _ports(rule: Mapping[str, Any]) -> Iterable[tuple[str, int | None, int | None]]:
    """(protocol, low, high) for each allowed port range; None bounds mean every port."""
    for allow in rule.get("allows") or []:
        protocol = str(allow.get("protocol", "")).lower()
        ports = allow.get("ports") or []
        if not ports:
            yield protocol, None, None
        for spec in ports:
            low, _, high = str(spec).partition("-")
            yield protocol, int(low), int(high or low)


def _exposed(rule: Mapping[str, Any], ports: Iterable[int]) -> list[int]:
    hit = []
    for port in ports:
        for protocol, low, high in _ports(rule):
            if protocol in ("tcp", "all", "6") and (low is None or low <= port <= (high or low)):
                hit.append(port)
                break
    return hit


def _open_to_all(rule: Mapping[str, Any]) -> bool:
    if str(rule.get("direction") or "INGRESS").upper() != "INGRESS":
        return False
    ranges = list(rule.get("sourceRanges") or [])
    if not ranges and not rule.get("sourceTags") and not rule.get("sourceServiceAccounts"):
        return True  # GCE's default source for an ingress rule is 0.0.0.0/0
    return any(ipaddress.ip_network(str(r), strict=False).prefixlen == 0 for r in ranges)


def no_public_service_ports(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != FIREWALL:
        return
    rule = args.props
    if not _open_to_all(rule):
        return
    allowed = CLIENT_PORTS if args.get_config().get("allowPublicClients") else ()
    exposed = [p for p in _exposed(rule, SERVICE_PORTS) if p not in allowed]
    if exposed:
        report_violation(
            f"firewall {args.name} opens port(s) {', '.join(map(str, exposed))} to 0.0.0.0/0; "
            "list the clients' networks in embedstack:client_cidrs / admin_cidrs instead",
            None,
        )


def _machine_type(props: Mapping[str, Any]) -> str:
    return str(props.get("machineType") or "").rsplit("/", 1)[-1]


def gpu_vms_are_spot(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type not in (INSTANCE, TEMPLATE, REGION_TEMPLATE):
        return
    props = args.props
    machine = _machine_type(props)
    if not (machine.startswith(GPU_MACHINE_PREFIXES) or props.get("guestAccelerators")):
        return
    scheduling = props.get("scheduling") or {}
    problems = []
    if scheduling.get("provisioningModel") != "SPOT":
        problems.append(f"provisioningModel is {scheduling.get('provisioningModel')!r}, not 'SPOT'")
    if scheduling.get("automaticRestart") is not False:
        problems.append("automaticRestart is not false")
    if args.resource_type != INSTANCE and scheduling.get("instanceTerminationAction") != "DELETE":
        problems.append("instanceTerminationAction is not 'DELETE' (a managed group recreates deleted VMs)")
    if problems:
        report_violation(f"GPU VM {args.name} ({machine}) is not spot: {'; '.join(problems)}", None)


def required_labels(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type not in LABELLED_TYPES:
        return
    labels = args.props.get("labels") or {}
    missing = [
        f"{key}={want or '<any>'}"
        for key, want in REQUIRED_LABELS.items()
        if not labels.get(key) or (want is not None and labels.get(key) != want)
    ]
    if missing:
        report_violation(f"{args.resource_type} {args.name} lacks label(s) {', '.join(missing)}", None)


NO_PUBLIC_SERVICE_PORTS = ResourceValidationPolicy(
    name="no-public-service-ports",
    description="No firewall rule opens SSH, the gateway, Qdrant or vLLM to 0.0.0.0/0.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=no_public_service_ports,
    config_schema=PolicyConfigSchema(
        properties={"allowPublicClients": {"type": "boolean", "default": False}},
    ),
)
GPU_VMS_ARE_SPOT = ResourceValidationPolicy(
    name="gpu-vms-are-spot",
    description="Every GPU VM and instance template is spot (the index tier never runs on a GPU).",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=gpu_vms_are_spot,
)
REQUIRED_LABELS_POLICY = ResourceValidationPolicy(
    name="required-labels",
    description="Every labelable resource carries app=embedstack and stack=<stack>.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=required_labels,
)

POLICIES: list[ResourceValidationPolicy] = [NO_PUBLIC_SERVICE_PORTS, GPU_VMS_ARE_SPOT, REQUIRED_LABELS_POLICY]
