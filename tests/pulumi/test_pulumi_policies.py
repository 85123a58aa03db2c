"""The policies of pulumi/policies, run the way the Pulumi engine runs them: each policy's
validate() on ResourceValidationArgs built from every resource the stacks create under mocks,
plus a bad resource per policy to prove each one can fail."""

from __future__ import annotations

import ast
from typing import Any

import pytest
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)
from pulumi_policy.proxy import unknown_checking_proxy

from stack_mocks import PROGRAM, StackRun, props, rules

# The fixtures stack_run, run_stack and bundle_dir (not a conftest.py: see stack_mocks.py).
pytest_plugins = ["pulumi_fixtures"]

FIREWALL = rules.FIREWALL
TEMPLATE = rules.TEMPLATE
INSTANCE = rules.INSTANCE
LABELS = {"app": "embedstack", "stack": "l4"}


def violations(
    policy: ResourceValidationPolicy, typ: str, properties: dict[str, Any], config: dict | None = None
) -> list[str]:
    name = "candidate"
    args = ResourceValidationArgs(
        resource_type=typ,
        props=unknown_checking_proxy(properties),
        urn=f"urn:pulumi:test::embedstack::{typ}::{name}",
        name=name,
        opts=PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), []),
        provider=None,
        config=config or {},
    )
    found: list[str] = []
    result = policy.validate(args, lambda message, urn=None: found.append(message))
    assert result is None, "the policies are synchronous"
    return found


def stack_violations(run: StackRun, config: dict | None = None) -> list[str]:
    return [
        f"{policy.name}: {resource.name}: {message}"
        for resource in run.resources
        for policy in rules.POLICIES
        for message in violations(policy, resource.typ, props(resource), config)
    ]


def test_every_resource_of_both_stacks_passes_every_policy(stack_run: StackRun) -> None:
    assert len(stack_run.resources) > 30
    assert stack_violations(stack_run) == []


def test_policies_cover_the_stacks_resources(stack_run: StackRun) -> None:
    """The policies are not vacuous: the stacks contain what each one inspects."""
    types = {r.typ for r in stack_run.resources}
    assert FIREWALL in types and TEMPLATE in types and INSTANCE in types
    labelled = [r for r in stack_run.resources if r.typ in rules.LABELLED_TYPES]
    assert {r.typ for r in labelled} == set(rules.LABELLED_TYPES) - {rules.REGION_TEMPLATE}


@pytest.mark.parametrize(
    "rule",
    [
        {"sourceRanges": ["0.0.0.0/0"], "allows": [{"protocol": "tcp", "ports": ["6333"]}]},
        {"sourceRanges": ["10.0.0.0/8", "0.0.0.0/0"], "allows": [{"protocol": "tcp", "ports": ["22"]}]},
        {"allows": [{"protocol": "tcp", "ports": ["8080"]}]},  # no source at all means 0.0.0.0/0
        {"sourceRanges": ["0.0.0.0/0"], "allows": [{"protocol": "tcp", "ports": ["8000-9000"]}]},
        {"sourceRanges": ["0.0.0.0/0"], "allows": [{"protocol": "all"}]},
        {"sourceRanges": ["0.0.0.0/0"], "allows": [{"protocol": "tcp", "ports": ["8001"]}]},
    ],
)
def test_no_public_service_ports_fails_on_an_open_rule(rule: dict[str, Any]) -> None:
    found = violations(rules.NO_PUBLIC_SERVICE_PORTS, FIREWALL, {"direction": "INGRESS", **rule})
    assert len(found) == 1 and "to 0.0.0.0/0" in found[0]


@pytest.mark.parametrize(
    "rule",
    [
        {"sourceRanges": ["203.0.113.7/32"], "allows": [{"protocol": "tcp", "ports": ["22", "8080"]}]},
        {"sourceRanges": ["0.0.0.0/0"], "allows": [{"protocol": "tcp", "ports": ["443"]}]},
        {"sourceRanges": ["0.0.0.0/0"], "allows": [{"protocol": "udp", "ports": ["8080"]}]},
        {"sourceTags": ["bastion"], "allows": [{"protocol": "tcp", "ports": ["22"]}]},
        {"direction": "EGRESS", "destinationRanges": ["0.0.0.0/0"], "allows": [{"protocol": "all"}]},
    ],
)
def test_no_public_service_ports_passes_narrow_rules(rule: dict[str, Any]) -> None:
    assert violations(rules.NO_PUBLIC_SERVICE_PORTS, FIREWALL, rule) == []


def test_public_clients_need_the_policy_config_too(run_stack) -> None:
    run = run_stack("l4", {"embedstack:client_cidrs": ["0.0.0.0/0"], "embedstack:allow_public_clients": True})
    found = stack_violations(run)
    assert sorted(f.split(":")[1].strip() for f in found) == ["es-l4-net-allow-gateway", "es-l4-net-allow-qdrant"]
    assert stack_violations(run, {"allowPublicClients": True}) == []
    # SSH stays closed to everyone whatever the policy config says.
    ssh_open = {"sourceRanges": ["0.0.0.0/0"], "allows": [{"protocol": "tcp", "ports": ["22"]}]}
    assert violations(rules.NO_PUBLIC_SERVICE_PORTS, FIREWALL, ssh_open, {"allowPublicClients": True})


@pytest.mark.parametrize(
    ("typ", "properties"),
    [
        (TEMPLATE, {"machineType": "a2-highgpu-1g", "scheduling": {"provisioningModel": "STANDARD"}}),
        (TEMPLATE, {"machineType": "g2-standard-8"}),
        (
            TEMPLATE,
            {
                "machineType": "g2-standard-8",
                "scheduling": {
                    "provisioningModel": "SPOT",
                    "automaticRestart": False,
                    "instanceTerminationAction": "STOP",
                },
            },
        ),
        (INSTANCE, {"machineType": "zones/us-central1-a/machineTypes/a2-ultragpu-1g", "scheduling": {}}),
        (INSTANCE, {"machineType": "n1-standard-8", "guestAccelerators": [{"type": "nvidia-tesla-t4", "count": 1}]}),
    ],
)
def test_gpu_vms_are_spot_fails_on_a_standard_gpu_vm(typ: str, properties: dict[str, Any]) -> None:
    found = violations(rules.GPU_VMS_ARE_SPOT, typ, properties)
    assert len(found) == 1 and "is not spot" in found[0]


def test_gpu_vms_are_spot_leaves_cpu_vms_alone() -> None:
    vm = {"machineType": "e2-standard-2", "scheduling": {"provisioningModel": "STANDARD"}}
    assert violations(rules.GPU_VMS_ARE_SPOT, INSTANCE, vm) == []


@pytest.mark.parametrize(
    "labels",
    [
        None,
        {},
        {"app": "embedstack"},
        {"stack": "l4"},
        {"app": "other", "stack": "l4"},
        {"app": "embedstack", "stack": ""},
    ],
)
def test_required_labels_fails_without_ours(labels: dict[str, str] | None) -> None:
    bucket = {"location": "US-CENTRAL1"} | ({"labels": labels} if labels is not None else {})
    found = violations(rules.REQUIRED_LABELS_POLICY, "gcp:storage/bucket:Bucket", bucket)
    assert len(found) == 1 and "lacks label" in found[0]


def test_required_labels_applies_to_labelable_types_only() -> None:
    assert violations(rules.REQUIRED_LABELS_POLICY, "gcp:storage/bucket:Bucket", {"labels": LABELS}) == []
    assert violations(rules.REQUIRED_LABELS_POLICY, "gcp:compute/network:Network", {}) == []


def test_policies_are_plain_objects_and_only_the_pack_entry_point_builds_a_pack() -> None:
    assert [p.name for p in rules.POLICIES] == ["no-public-service-ports", "gpu-vms-are-spot", "required-labels"]
    assert all(p.enforcement_level == EnforcementLevel.MANDATORY for p in rules.POLICIES)
    assert not hasattr(rules, "PolicyPack")
    tree = ast.parse((PROGRAM / "policies" / "__main__.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "PolicyPack"]
    assert len(calls) == 1
    assert {k.arg: ast.unparse(k.value) for k in calls[0].keywords}["policies"] == "POLICIES"
