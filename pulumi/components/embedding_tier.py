"""The embedding tier: spot GPU VMs in a regional managed instance group behind a regional
external passthrough Network Load Balancer with a reserved address.

A preempted VM is deleted (instanceTerminationAction DELETE) and the group recreates it; it
configures itself from the bundle at boot. Clients only ever see the load balancer's reserved
address, so their settings survive every preemption. The load balancer's health check probes the
gateway's /ready, which turns 503 the moment a drain starts, while vLLM is down, and for good on a VM
whose GPU driver failed twice (pulumi/bootstrap/startup.sh; the reason is in /ready and the guest
attribute embedstack/boot-failure). Autohealing probes /health instead, whether the gateway answers at
all: Google's "Set up an application-based health check and autohealing" page
(https://cloud.google.com/compute/docs/instance-groups/autohealing-instances-in-migs) has autohealing
recreate failed VMs and advises a separate, less aggressive check than the load balancer's, and a VM
that failed its boot for good would fail the same way from the same image, so recreating it would
only loop, a spot GPU billed each time. The failed VM stays up for its owner to read why.

With embedstack:tls (the default) the gateway serves HTTPS on the same port with a certificate
from the stack's CA for the reserved address, and both health checks probe over HTTPS (Google's
checkers do not verify certificates, so none is needed for them).
"""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from catalog import GATEWAY_PORT
from components.options import child_options
from components.tier_vms import TEMPLATE_ARGS, HealthProbe, TierVm, external_address, health_check
from config import Settings

# Autohealing: patient (a first boot installs the driver, vLLM and the model, and may reboot once), then
# firm. It probes /health, the gateway's liveness: /ready is the load balancer's (see the module docstring).
AUTOHEAL = HealthProbe(
    "/health", "embedstack gateway /health, for autohealing", interval=10, timeout=5, healthy=2, unhealthy=6
)
LOAD_BALANCER = HealthProbe(
    "/ready", "embedstack gateway /ready, for the load balancer", interval=5, timeout=4, healthy=2, unhealthy=2
)


class EmbeddingTier(pulumi.ComponentResource):
    template: gcp.compute.InstanceTemplate
    group: gcp.compute.RegionInstanceGroupManager
    address: gcp.compute.Address
    forwarding_rule: gcp.compute.ForwardingRule
    endpoint: pulumi.Output[str]

    def __init__(self, name: str, settings: Settings, vm: TierVm, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("embedstack:gcp:EmbeddingTier", name, None, opts)
        child = child_options(self, opts)
        # First, because the certificate names it.
        self.address = external_address(
            f"{name}-address", f"embedstack {settings.stack}: the gateway's stable address", settings, child
        )
        tls_secrets = {}
        if vm.ca is not None:
            server = vm.ca.issue(f"{name}-gateway", "embedstack gateway", [self.address.address], parent=self)
            # The embedding_service role writes the PEM content to its config directory.
            tls_secrets = {"embedding_service_tls_cert": server.cert_pem, "embedding_service_tls_key": server.key_pem}
        self.template = self._template(name, settings, vm, tls_secrets, child)
        self.group = self._group(name, settings, vm, child)
        self.forwarding_rule = self._load_balancer(name, settings, vm, child)
        self.endpoint = pulumi.Output.concat(f"{vm.scheme}://", self.address.address, f":{GATEWAY_PORT}/v1")
        self.register_outputs(
            {"endpoint": self.endpoint, "address": self.address.address, "group": self.group.self_link}
        )

    def _template(
        self, name: str, s: Settings, vm: TierVm, tls_secrets: dict, child: pulumi.ResourceOptions
    ) -> gcp.compute.InstanceTemplate:
        return gcp.compute.InstanceTemplate(
            f"{name}-template",
            description=f"embedstack {s.stack}: spot {s.gpu.key} VM running vLLM and the gateway",
            # A2 and G2 machine types carry their GPUs: no guest_accelerators (see catalog.py).
            machine_type=s.machine_type,
            region=s.region,
            disks=[
                gcp.compute.InstanceTemplateDiskArgs(
                    boot=True,
                    auto_delete=True,
                    # The family, checked to exist during preview (images.check_family).
                    source_image=vm.boot_image,
                    disk_size_gb=s.boot_disk_gb,
                    disk_type="pd-balanced",
                    labels=s.labels,
                )
            ],
            network_interfaces=[
                gcp.compute.InstanceTemplateNetworkInterfaceArgs(
                    subnetwork=vm.subnetwork,
                    access_configs=[gcp.compute.InstanceTemplateNetworkInterfaceAccessConfigArgs()]
                    if s.public_ip
                    else [],
                )
            ],
            **vm.vm_args(
                s,
                "embedding",
                tls_secrets,
                TEMPLATE_ARGS,
                spot=True,
                # Secure Boot would refuse the unsigned NVIDIA module the image installs at first boot.
                secure_boot=False,
            ),
            opts=child,
        )

    def _group(
        self, name: str, s: Settings, vm: TierVm, child: pulumi.ResourceOptions
    ) -> gcp.compute.RegionInstanceGroupManager:
        autoheal_check = health_check(f"{name}-autoheal", AUTOHEAL, GATEWAY_PORT, vm.ca is not None, s, child)
        zones = list(s.gpu_zones)
        return gcp.compute.RegionInstanceGroupManager(
            f"{name}-group",
            base_instance_name=f"{name}-gpu",
            region=s.region,
            distribution_policy_zones=zones,
            # Spot capacity comes and goes per zone: let the group use whichever listed zone has it.
            distribution_policy_target_shape="ANY" if len(zones) > 1 else "EVEN",
            versions=[
                gcp.compute.RegionInstanceGroupManagerVersionArgs(
                    name="primary", instance_template=self.template.self_link_unique
                )
            ],
            target_size=s.target_size,
            named_ports=[gcp.compute.RegionInstanceGroupManagerNamedPortArgs(name=vm.scheme, port=GATEWAY_PORT)],
            auto_healing_policies=gcp.compute.RegionInstanceGroupManagerAutoHealingPoliciesArgs(
                health_check=autoheal_check.id, initial_delay_sec=s.autoheal_initial_delay_sec
            ),
            # A new template (a new bundle) rolls the group: one extra VM per zone comes up
            # before an old one goes, so the address keeps answering. Needs spare GPU quota.
            update_policy=gcp.compute.RegionInstanceGroupManagerUpdatePolicyArgs(
                type="PROACTIVE",
                minimal_action="REPLACE",
                max_surge_fixed=len(zones),
                max_unavailable_fixed=0,
                instance_redistribution_type="NONE",
                replacement_method="SUBSTITUTE",
            ),
            # A repaired (recreated) VM comes from the current template.
            instance_lifecycle_policy=gcp.compute.RegionInstanceGroupManagerInstanceLifecyclePolicyArgs(
                default_action_on_failure="REPAIR", force_update_on_repair="YES"
            ),
            # `pulumi up` does not wait for the VMs' first boot (several minutes).
            wait_for_instances=False,
            project=s.project,
            opts=child,
        )

    def _load_balancer(
        self, name: str, s: Settings, vm: TierVm, child: pulumi.ResourceOptions
    ) -> gcp.compute.ForwardingRule:
        """The regional external passthrough Network Load Balancer on the reserved address."""
        lb_check = health_check(f"{name}-lb", LOAD_BALANCER, GATEWAY_PORT, vm.ca is not None, s, child, regional=True)
        backend = gcp.compute.RegionBackendService(
            f"{name}-backend",
            region=s.region,
            load_balancing_scheme="EXTERNAL",
            protocol="TCP",
            health_checks=lb_check.id,
            backends=[
                gcp.compute.RegionBackendServiceBackendArgs(
                    group=self.group.instance_group, balancing_mode="CONNECTION"
                )
            ],
            # Preemption leaves 30 s; the gateway drains within 25.
            connection_draining_timeout_sec=30,
            session_affinity="NONE",
            project=s.project,
            opts=child,
        )
        return gcp.compute.ForwardingRule(
            f"{name}-forwarding",
            description=f"embedstack {s.stack}: gateway :{GATEWAY_PORT}",
            region=s.region,
            load_balancing_scheme="EXTERNAL",
            ip_protocol="TCP",
            ports=[str(GATEWAY_PORT)],
            ip_address=self.address.address,
            backend_service=backend.self_link,
            network_tier="PREMIUM",
            labels=s.labels,
            project=s.project,
            opts=child,
        )
