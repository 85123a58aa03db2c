"""One service account per tier, each allowed to write logs and metrics and nothing else here.

Reading the bundle is granted by BundleStore on its bucket only; the index tier's account may
also create objects in the Qdrant snapshot bucket (SnapshotStore). Separate accounts let the
firewall rules target a tier by identity (a network tag can be set by anyone who can edit a VM).
"""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from components.options import child_options
from config import Settings, resource_stem

# Project roles the VMs need: the guest agent and Ops Agent write logs and metrics.
PROJECT_ROLES: tuple[str, ...] = ("roles/logging.logWriter", "roles/monitoring.metricWriter")
DESCRIPTIONS: dict[str, str] = {
    "embed": "Reads the embedstack bundle, writes logs and metrics.",
    "index": "Reads the embedstack bundle, writes logs, metrics and Qdrant snapshots.",
}


def account_id(stack: str, tier: str) -> str:
    """A valid account id (6-30 chars, [a-z][-a-z0-9]*[a-z0-9]) naming stack and tier, one per stack.

    `es-<resource stem>-<tier>` is at most 3 + 21 + 6 = 30 characters (config.resource_stem).
    """
    return f"es-{resource_stem(stack)}-{tier}"


class ServiceAccounts(pulumi.ComponentResource):
    embedding: gcp.serviceaccount.Account
    index: gcp.serviceaccount.Account

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("embedstack:gcp:ServiceAccounts", name, None, opts)
        child = child_options(self, opts)
        accounts: dict[str, gcp.serviceaccount.Account] = {}
        for tier, purpose in (("embed", "spot GPU embedding tier (vLLM + gateway)"), ("index", "Qdrant index tier")):
            account = gcp.serviceaccount.Account(
                f"{name}-{tier}",
                account_id=account_id(settings.stack, tier),
                display_name=f"embedstack {settings.stack}: {purpose}",
                description=DESCRIPTIONS[tier],
                project=settings.project,
                opts=child,
            )
            for role in PROJECT_ROLES:
                gcp.projects.IAMMember(
                    f"{name}-{tier}-{role.split('/')[1].replace('.', '-').lower()}",
                    project=settings.project,
                    role=role,
                    member=account.email.apply(lambda email: f"serviceAccount:{email}"),
                    opts=child,
                )
            accounts[tier] = account
        self.embedding = accounts["embed"]
        self.index = accounts["index"]
        self.register_outputs({"embedding_email": self.embedding.email, "index_email": self.index.email})
