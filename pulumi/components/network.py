"""The VPC (created, or an existing one by name), Cloud NAT for VMs without public addresses, and
the firewall: default-deny inbound, then exactly the openings the architecture names.

- SSH (22) from embedstack:admin_cidrs (plus IAP's forwarders when allow_iap_ssh) to both tiers;
- the gateway (8080) from embedstack:client_cidrs to the embedding tier;
- Qdrant (6333, 6334) from embedstack:client_cidrs to the index tier;
- Google's health checkers to the embedding tier's gateway port only.

Rules target the tiers' service accounts, not network tags: only someone allowed to act as the
account can put a VM under a rule, whereas anyone who can edit a VM can change its tags.
"""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from catalog import GATEWAY_PORT, HEALTH_CHECK_RANGES, IAP_RANGE, QDRANT_PORTS, SSH_PORT
from components.options import child_options
from config import Settings


class Network(pulumi.ComponentResource):
    network: pulumi.Output[str]
    subnetwork: pulumi.Output[str]
    firewalls: dict[str, gcp.compute.Firewall]

    def __init__(
        self,
        name: str,
        settings: Settings,
        embedding_account: pulumi.Input[str],
        index_account: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("embedstack:gcp:Network", name, None, opts)
        child = child_options(self, opts)
        s = settings

        if s.create_network:
            self.network, self.subnetwork = self._create_vpc(name, s, child)
        else:
            self.network = pulumi.Output.from_input(f"projects/{s.project}/global/networks/{s.network}")
            self.subnetwork = pulumi.Output.from_input(
                f"projects/{s.project}/regions/{s.region}/subnetworks/{s.subnetwork}"
            )

        # VMs without public addresses still fetch packages, vLLM, the model and Qdrant's .deb.
        if s.create_nat:
            router = gcp.compute.Router(
                f"{name}-router", network=self.network, region=s.region, project=s.project, opts=child
            )
            gcp.compute.RouterNat(
                f"{name}-nat",
                router=router.name,
                region=s.region,
                nat_ip_allocate_option="AUTO_ONLY",
                source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
                project=s.project,
                opts=child,
            )

        self.firewalls = {
            rule: gcp.compute.Firewall(
                f"{name}-allow-{rule}",
                network=self.network,
                direction="INGRESS",
                priority=1000,
                description=f"embedstack {s.stack}: {what}",
                source_ranges=sources,
                allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(p) for p in ports])],
                target_service_accounts=targets,
                project=s.project,
                opts=child,
            )
            for rule, (sources, ports, targets, what) in firewall_rules(s, embedding_account, index_account).items()
        }
        self.register_outputs({"network": self.network, "subnetwork": self.subnetwork})

    @staticmethod
    def _create_vpc(
        name: str, s: Settings, child: pulumi.ResourceOptions
    ) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        vpc = gcp.compute.Network(
            name,
            auto_create_subnetworks=False,
            routing_mode="REGIONAL",
            description=f"embedstack {s.stack}",
            project=s.project,
            opts=child,
        )
        subnet = gcp.compute.Subnetwork(
            f"{name}-{s.region}",
            network=vpc.id,
            region=s.region,
            ip_cidr_range=s.subnet_cidr,
            # The VMs reach Cloud Storage (the bundle) without public addresses.
            private_ip_google_access=True,
            project=s.project,
            opts=child,
        )
        return vpc.self_link, subnet.self_link


def firewall_rules(
    s: Settings, embedding_account: pulumi.Input[str], index_account: pulumi.Input[str]
) -> dict[str, tuple[list[str], list[int], list[pulumi.Input[str]], str]]:
    """Exactly the openings of the module docstring: rule → (sources, ports, target accounts, what it is for)."""
    admin_sources = list(s.admin_cidrs) + ([IAP_RANGE] if s.allow_iap_ssh else [])
    return {
        "ssh": (admin_sources, [SSH_PORT], [embedding_account, index_account], "SSH from the admin networks"),
        "gateway": (list(s.client_cidrs), [GATEWAY_PORT], [embedding_account], "the gateway from clients"),
        "qdrant": (list(s.client_cidrs), list(QDRANT_PORTS), [index_account], "Qdrant from clients"),
        "health": (
            list(HEALTH_CHECK_RANGES),
            [GATEWAY_PORT],
            [embedding_account],
            "Google health checkers to the gateway's /ready (autohealing and the load balancer)",
        ),
    }
