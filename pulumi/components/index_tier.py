"""The index tier: Qdrant on a small standard (never spot) VM with its data on a persistent disk
that is snapshotted on a schedule, and a reserved internal address (optionally an external one).

Preemption never touches it, so the embedding tier can scale and churn freely. The disk outlives
the VM (it is its own resource); its snapshots outlive the disk (KEEP_AUTO_SNAPSHOTS).

Changing the VM's image, zone or machine series replaces it. The provider would create the new VM
before deleting the old one, which cannot work here: the data disk is attached READ_WRITE to the
old VM and the reserved internal address is in use by it. So the VM is deleted first
(delete_before_replace). The data disk is `protect`ed: a change that would replace it (zone, type,
or its source snapshot; all ForceNew in the provider) stops `pulumi preview`/`up` instead of
deleting the index. pulumi/README.md ("Moving the index") describes the move through a snapshot.

With a public address and embedstack:tls (Settings.qdrant_tls), Qdrant serves REST and gRPC over
HTTPS with a certificate from the stack's CA for both reserved addresses and 127.0.0.1 (clients
on the VM itself); without one it is reached inside the VPC or through the IAP
tunnel, whose SSH transport already encrypts.
"""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from bundle_build import QDRANT_DATA_DEVICE
from catalog import QDRANT_PORTS, boot_disk_type
from components.options import child_options
from components.tier_vms import INSTANCE_ARGS, TierVm, external_address
from config import Settings


class IndexTier(pulumi.ComponentResource):
    instance: gcp.compute.Instance
    data_disk: gcp.compute.Disk
    snapshot_policy: gcp.compute.ResourcePolicy
    internal_address: gcp.compute.Address
    external_address: gcp.compute.Address | None
    endpoint: pulumi.Output[str]  # http(s)://<reserved internal address>:6333
    public_endpoint: pulumi.Output[str] | None

    def __init__(self, name: str, settings: Settings, vm: TierVm, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("embedstack:gcp:IndexTier", name, None, opts)
        child = child_options(self, opts)
        s = settings
        self.internal_address = gcp.compute.Address(
            f"{name}-internal",
            description=f"embedstack {s.stack}: Qdrant's stable internal address",
            region=s.region,
            address_type="INTERNAL",
            subnetwork=vm.subnetwork,
            labels=s.labels,
            project=s.project,
            opts=child,
        )
        self.external_address = (
            external_address(f"{name}-external", f"embedstack {s.stack}: Qdrant's stable external address", s, child)
            if s.qdrant_public_ip
            else None
        )
        tls_secrets = {}
        if vm.ca is not None:
            addresses = [a.address for a in (self.external_address, self.internal_address) if a is not None]
            server = vm.ca.issue(f"{name}-qdrant", "embedstack qdrant", [*addresses, "127.0.0.1"], parent=self)
            # The qdrant role writes the PEM content to root:qdrant 0640 files; the snapshot upload
            # (role qdrant_snapshots) then reaches https://127.0.0.1 and pins that certificate.
            tls_secrets = {
                "qdrant_enable_tls": True,
                "qdrant_tls_cert_pem": server.cert_pem,
                "qdrant_tls_key_pem": server.key_pem,
            }
        self.data_disk, self.snapshot_policy = self._snapshotted_disk(name, s, child)
        self.instance = self._vm(name, s, vm, tls_secrets, child)
        self.endpoint = pulumi.Output.concat(f"{vm.scheme}://", self.internal_address.address, f":{QDRANT_PORTS[0]}")
        self.public_endpoint = (
            pulumi.Output.concat(f"{vm.scheme}://", self.external_address.address, f":{QDRANT_PORTS[0]}")
            if self.external_address is not None
            else None
        )
        self.register_outputs({"endpoint": self.endpoint, "instance": self.instance.name})

    def _snapshotted_disk(
        self, name: str, s: Settings, child: pulumi.ResourceOptions
    ) -> tuple[gcp.compute.Disk, gcp.compute.ResourcePolicy]:
        """Qdrant's data disk and its daily snapshot schedule."""
        disk = gcp.compute.Disk(
            f"{name}-data",
            description=f"embedstack {s.stack}: Qdrant storage and snapshots",
            zone=s.zone,
            size=s.qdrant_disk_gb,
            type=s.qdrant_disk_type,
            # Set only for a move (README "Moving the index"): the new disk starts from this snapshot.
            snapshot=s.qdrant_disk_snapshot or None,
            labels={**s.labels, "tier": "index"},
            project=s.project,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(protect=True)),
        )
        policy = gcp.compute.ResourcePolicy(
            f"{name}-snapshots",
            description=f"embedstack {s.stack}: daily snapshots of the Qdrant disk",
            region=s.region,
            snapshot_schedule_policy=gcp.compute.ResourcePolicySnapshotSchedulePolicyArgs(
                schedule=gcp.compute.ResourcePolicySnapshotSchedulePolicyScheduleArgs(
                    daily_schedule=gcp.compute.ResourcePolicySnapshotSchedulePolicyScheduleDailyScheduleArgs(
                        days_in_cycle=1, start_time=s.snapshot_start_time
                    )
                ),
                retention_policy=gcp.compute.ResourcePolicySnapshotSchedulePolicyRetentionPolicyArgs(
                    max_retention_days=s.snapshot_retention_days,
                    on_source_disk_delete="KEEP_AUTO_SNAPSHOTS",
                ),
                # Snapshots live in Cloud Storage in the stack's region, apart from the disk.
                snapshot_properties=gcp.compute.ResourcePolicySnapshotSchedulePolicySnapshotPropertiesArgs(
                    labels={**s.labels, "tier": "index"}, storage_locations=s.region, guest_flush=False
                ),
            ),
            project=s.project,
            opts=child,
        )
        gcp.compute.DiskResourcePolicyAttachment(
            f"{name}-snapshots-attachment",
            disk=disk.name,
            name=policy.name,
            zone=s.zone,
            project=s.project,
            opts=child,
        )
        return disk, policy

    def _vm(
        self, name: str, s: Settings, vm: TierVm, tls_secrets: dict, child: pulumi.ResourceOptions
    ) -> gcp.compute.Instance:
        access = (
            [gcp.compute.InstanceNetworkInterfaceAccessConfigArgs(nat_ip=self.external_address.address)]
            if self.external_address is not None
            else []
        )
        return gcp.compute.Instance(
            f"{name}-vm",
            description=f"embedstack {s.stack}: Qdrant",
            machine_type=s.qdrant_machine_type,
            zone=s.zone,
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                auto_delete=True,
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image=vm.boot_image, size=20, type=boot_disk_type(s.qdrant_machine_type), labels=s.labels
                ),
            ),
            attached_disks=[
                gcp.compute.InstanceAttachedDiskArgs(
                    source=self.data_disk.self_link, device_name=QDRANT_DATA_DEVICE, mode="READ_WRITE"
                )
            ],
            network_interfaces=[
                gcp.compute.InstanceNetworkInterfaceArgs(
                    subnetwork=vm.subnetwork, network_ip=self.internal_address.address, access_configs=access
                )
            ],
            **vm.vm_args(s, "index", tls_secrets, INSTANCE_ARGS, spot=False, secure_boot=True),
            # A machine-type change stops and starts the VM instead of failing the update.
            allow_stopping_for_update=True,
            # The old VM holds the disk and the address: it must go before the new one comes.
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(delete_before_replace=True)),
        )
