"""The bucket the index tier uploads Qdrant's full-storage snapshots to (role qdrant_snapshots).

The disk snapshot schedule (index_tier.py) covers a lost disk within its zone's region; these
objects are Qdrant's own, portable snapshots, restorable into any Qdrant. The index tier's account
may only create objects in this bucket (roles/storage.objectCreator: no read, list, overwrite or
delete); old objects go by the lifecycle rule after snapshot_retention_days. Its name is fixed
from the project and stack (bundle_build.snapshot_bucket_name), because the bundle's vars.yml,
built before any resource exists, carries it to the VM.
"""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from bundle_build import snapshot_bucket_name
from components.options import child_options
from config import Settings


class SnapshotStore(pulumi.ComponentResource):
    bucket: gcp.storage.Bucket
    writer: gcp.storage.BucketIAMMember

    def __init__(
        self,
        name: str,
        settings: Settings,
        writer: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("embedstack:gcp:SnapshotStore", name, None, opts)
        child = child_options(self, opts)
        s = settings
        # Private by construction: IAM only (no ACLs), public access prevented. Not force_destroy:
        # `pulumi destroy` stops at a bucket that still holds backups instead of deleting them.
        self.bucket = gcp.storage.Bucket(
            name,
            name=snapshot_bucket_name(s),
            location=s.region.upper(),
            storage_class="STANDARD",
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            versioning=gcp.storage.BucketVersioningArgs(enabled=False),
            lifecycle_rules=[
                gcp.storage.BucketLifecycleRuleArgs(
                    action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                    condition=gcp.storage.BucketLifecycleRuleConditionArgs(age=s.snapshot_retention_days),
                )
            ],
            force_destroy=False,
            labels={**s.labels, "tier": "index"},
            project=s.project,
            opts=child,
        )
        self.writer = gcp.storage.BucketIAMMember(
            f"{name}-writer",
            bucket=self.bucket.name,
            role="roles/storage.objectCreator",
            member=pulumi.Output.from_input(writer).apply(lambda email: f"serviceAccount:{email}"),
            opts=child,
        )
        self.register_outputs({"bucket": self.bucket.name})
