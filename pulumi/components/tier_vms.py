"""What the embedding and index tiers' VMs share: how they are wired into the stack, the arguments
their VMs set alike, their reserved external address and the HTTP-or-HTTPS health check.

Plain helpers, not a component: what they create stays a direct child of its tier, so no URN changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.metadata import secrets_yaml
from components.tls import CertificateAuthority
from config import Settings


@dataclass(frozen=True)
class VmArgTypes:
    """The provider's argument types of one VM resource: an instance template's differ from an instance's."""

    scheduling: type
    service_account: type
    shielded_instance_config: type


TEMPLATE_ARGS = VmArgTypes(
    gcp.compute.InstanceTemplateSchedulingArgs,
    gcp.compute.InstanceTemplateServiceAccountArgs,
    gcp.compute.InstanceTemplateShieldedInstanceConfigArgs,
)
INSTANCE_ARGS = VmArgTypes(
    gcp.compute.InstanceSchedulingArgs,
    gcp.compute.InstanceServiceAccountArgs,
    gcp.compute.InstanceShieldedInstanceConfigArgs,
)


@dataclass(frozen=True)
class TierVm:
    """How a tier's VMs are wired: network, identity, boot image, boot metadata and secrets, TLS."""

    subnetwork: pulumi.Input[str]
    service_account: pulumi.Input[str]
    # What the bootstrap reads (pulumi/bootstrap/startup.sh), besides embedstack-secrets.
    metadata: Mapping[str, pulumi.Input[str]]
    # The tier's ansible variables for embedstack-secrets.
    secrets: Mapping[str, pulumi.Input[object]]
    boot_image: pulumi.Input[str]
    # HTTPS with a server certificate from this CA, or plain HTTP when None.
    ca: CertificateAuthority | None

    @property
    def scheme(self) -> str:
        return "http" if self.ca is None else "https"

    def vm_args(
        self,
        settings: Settings,
        tier: str,
        tls_secrets: Mapping[str, pulumi.Input[object]],
        types: VmArgTypes,
        spot: bool,
        secure_boot: bool,
    ) -> dict[str, object]:
        """What both tiers' VMs set alike: scheduling, identity, Shielded VM, metadata, labels and project.

        `tls_secrets`: the server certificate's ansible variables, beside the tier's own secrets.
        """
        if spot:
            scheduling = types.scheduling(
                provisioning_model="SPOT",
                preemptible=True,
                automatic_restart=False,
                # GPUs cannot live-migrate; spot VMs must terminate on host maintenance anyway.
                on_host_maintenance="TERMINATE",
                # The group recreates a deleted VM; a stopped one would just sit there.
                instance_termination_action="DELETE",
            )
        else:
            scheduling = types.scheduling(
                provisioning_model="STANDARD", preemptible=False, automatic_restart=True, on_host_maintenance="MIGRATE"
            )
        return {
            "scheduling": scheduling,
            "service_account": types.service_account(email=self.service_account, scopes=["cloud-platform"]),
            "shielded_instance_config": types.shielded_instance_config(
                enable_secure_boot=secure_boot, enable_vtpm=True, enable_integrity_monitoring=True
            ),
            "metadata": {**self.metadata, "embedstack-secrets": secrets_yaml({**self.secrets, **tls_secrets})},
            "labels": {**settings.labels, "tier": tier},
            "project": settings.project,
        }


def external_address(
    name: str, description: str, settings: Settings, opts: pulumi.ResourceOptions
) -> gcp.compute.Address:
    """A reserved regional external address, so clients keep theirs across VM replacements."""
    return gcp.compute.Address(
        name,
        description=description,
        region=settings.region,
        address_type="EXTERNAL",
        network_tier="PREMIUM",
        labels=settings.labels,
        project=settings.project,
        opts=opts,
    )


@dataclass(frozen=True)
class HealthProbe:
    """One HTTP(S) health check of a tier's VMs: the path it asks, how often, and how patiently."""

    path: str
    description: str
    interval: int  # seconds between probes
    timeout: int  # seconds a probe may take
    healthy: int  # successes in a row that make a VM healthy
    unhealthy: int  # failures in a row that make it unhealthy


def health_check(
    name: str,
    probe: HealthProbe,
    port: int,
    https: bool,
    settings: Settings,
    opts: pulumi.ResourceOptions,
    regional: bool = False,
) -> gcp.compute.HealthCheck | gcp.compute.RegionHealthCheck:
    """`probe` over HTTPS where the tier serves it (Google's checkers verify no certificate), else HTTP;
    regional for a regional load balancer, global for a group's autohealing."""
    if regional:
        check_type, where = gcp.compute.RegionHealthCheck, {"region": settings.region}
        http_args, https_args = (
            gcp.compute.RegionHealthCheckHttpHealthCheckArgs,
            gcp.compute.RegionHealthCheckHttpsHealthCheckArgs,
        )
    else:
        check_type, where = gcp.compute.HealthCheck, {}
        http_args, https_args = gcp.compute.HealthCheckHttpHealthCheckArgs, gcp.compute.HealthCheckHttpsHealthCheckArgs
    request = (https_args if https else http_args)(port=port, request_path=probe.path)
    return check_type(
        name,
        description=probe.description,
        **where,
        check_interval_sec=probe.interval,
        timeout_sec=probe.timeout,
        healthy_threshold=probe.healthy,
        unhealthy_threshold=probe.unhealthy,
        http_health_check=None if https else request,
        https_health_check=request if https else None,
        project=settings.project,
        opts=opts,
    )
