"""The bucket and the content-addressed bundle object the VMs configure themselves from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pulumi
import pulumi_gcp as gcp

from bundle_build import Bundle
from components.options import child_options
from config import Settings


class BundleStore(pulumi.ComponentResource):
    bucket: gcp.storage.Bucket
    object: gcp.storage.BucketObject
    url: pulumi.Output[str]  # gs://<bucket>/<object>, the embedstack-bundle metadata value

    def __init__(
        self,
        name: str,
        settings: Settings,
        bundle: Bundle,
        tarball: Path,
        readers: Sequence[pulumi.Input[str]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("embedstack:gcp:BundleStore", name, None, opts)
        child = child_options(self, opts)
        s = settings
        # Private by construction: IAM only (no ACLs), public access prevented. No versioning:
        # objects are content-addressed, so an old bundle is never overwritten, only deleted
        # once no template refers to it. force_destroy: everything in it is derived.
        self.bucket = gcp.storage.Bucket(
            name,
            location=s.region.upper(),
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            versioning=gcp.storage.BucketVersioningArgs(enabled=False),
            force_destroy=True,
            labels=s.labels,
            project=s.project,
            opts=child,
        )
        for i, reader in enumerate(readers):
            gcp.storage.BucketIAMMember(
                f"{name}-reader-{i}",
                bucket=self.bucket.name,
                role="roles/storage.objectViewer",
                member=pulumi.Output.from_input(reader).apply(lambda email: f"serviceAccount:{email}"),
                opts=child,
            )
        self.object = gcp.storage.BucketObject(
            f"{name}-object",
            bucket=self.bucket.name,
            name=bundle.object_name,
            source=pulumi.FileAsset(str(tarball)),
            content_type="application/gzip",
            opts=child,
        )
        self.url = pulumi.Output.concat("gs://", self.bucket.name, "/", self.object.name)
        self.register_outputs({"bucket": self.bucket.name, "url": self.url})
