"""embedstack on GCP: wires config → components and exports what a user needs.

`pulumi up` (on your machine) builds the bundle from this repository, uploads it, and creates
both tiers. See README.md beside this file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_random as random

import bundle_build
import config
from catalog import QDRANT_PORTS, trust_ca_steps
from components import BundleStore, EmbeddingTier, IndexTier, Network, ServiceAccounts
from components.project_services import ProjectServices
from components.snapshots import SnapshotStore
from components.tier_vms import TierVm
from components.tls import CertificateAuthority
from images import check_family, family_image

PROGRAM_DIR = Path(__file__).resolve().parent
BOOTSTRAP_DIR = PROGRAM_DIR / "bootstrap"
# Where the tarball is written before upload (build/ is ignored by git).
BUNDLE_DIR = Path(os.environ.get("EMBEDSTACK_BUNDLE_DIR") or bundle_build.REPO / "build" / "pulumi-bundles")


def bootstrap_script(name: str) -> str:
    path = BOOTSTRAP_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the VMs' {name} comes from it")
    return path.read_text()


def secret_or_generated(value: pulumi.Output[str] | None, name: str) -> pulumi.Output[str]:
    """The user's `pulumi config set --secret` value, or a generated one kept in the stack state."""
    if value is not None:
        return pulumi.Output.secret(value)
    # The provider marks `result` secret already; said here too, so no output can lose it.
    return pulumi.Output.secret(random.RandomPassword(name, length=40, special=False).result)


# What Roo Code (Node.js in VS Code) needs to trust the stack's CA, in the words of `embedstack roo-config`.
TRUST_CA = "pulumi stack output ca_certificate > embedstack-ca.pem, then " + trust_ca_steps(
    "/path/to/embedstack-ca.pem"
)


def main() -> dict[str, object]:
    settings, secrets = config.load()
    # Every logical name starts with it; Pulumi's auto-naming appends "-" and 7 characters, and
    # resource_stem keeps it valid in GCE names and distinct per stack.
    prefix = f"es-{config.resource_stem(settings.stack)}"
    warn_if_plaintext(settings)
    images_checked = check_boot_images(settings)
    keys = ApiKeys(
        gateway=secret_or_generated(secrets.gateway_api_key, f"{prefix}-gateway-key"),
        qdrant=secret_or_generated(secrets.qdrant_api_key, f"{prefix}-qdrant-key"),
        vllm=secret_or_generated(secrets.vllm_api_key, f"{prefix}-vllm-key"),
    )

    # The APIs first: everything else waits for them (a fresh project has them off).
    services = ProjectServices(f"{prefix}-api", settings)
    after_apis = pulumi.ResourceOptions(depends_on=list(services.services.values()))
    embedding_image, qdrant_image = boot_images(settings, images_checked, services.services["compute.googleapis.com"])
    accounts = ServiceAccounts(f"{prefix}-sa", settings, opts=after_apis)
    network = Network(f"{prefix}-net", settings, accounts.embedding.email, accounts.index.email, opts=after_apis)
    store = bundle_store(f"{prefix}-bundle", settings, accounts, opts=after_apis)
    # Qdrant's own snapshots, uploaded by the index VM (role qdrant_snapshots) to the bucket that
    # vars.yml names; the disk snapshot schedule stays in IndexTier.
    snapshots = SnapshotStore(f"{prefix}-qdrant-snapshots", settings, writer=accounts.index.email, opts=after_apis)
    # The stack's own CA, created once; each tier gets a server certificate for its addresses.
    ca = CertificateAuthority(f"{prefix}-tls", settings) if settings.tls else None

    metadata = boot_metadata(store.url)
    embedding = EmbeddingTier(
        f"{prefix}-embed",
        settings,
        TierVm(
            subnetwork=network.subnetwork,
            service_account=accounts.embedding.email,
            metadata=embedding_metadata(settings, metadata),
            secrets={"embedding_service_api_keys": keys.gateway.apply(lambda k: [k]), "vllm_api_key": keys.vllm},
            boot_image=embedding_image,
            ca=ca,
        ),
        opts=after_apis,
    )
    index = IndexTier(
        f"{prefix}-index",
        settings,
        TierVm(
            subnetwork=network.subnetwork,
            service_account=accounts.index.email,
            metadata={**metadata, "embedstack-tier": "index"},
            secrets={"qdrant_api_key": keys.qdrant},
            boot_image=qdrant_image,
            ca=ca if settings.qdrant_tls else None,
        ),
        opts=after_apis,
    )

    outputs = stack_outputs(settings, keys, store, snapshots, embedding, index, ca)
    for name, value in outputs.items():
        pulumi.export(name, value)
    return outputs


@dataclass(frozen=True)
class ApiKeys:
    """The stack's API keys: the user's secrets, or generated ones kept in the stack state."""

    gateway: pulumi.Output[str]
    qdrant: pulumi.Output[str]
    vllm: pulumi.Output[str]


def warn_if_plaintext(settings: config.Settings) -> None:
    if not settings.tls:
        pulumi.log.warn(
            "embedstack:tls is false and embedstack:allow_plaintext is true: the gateway's public address"
            + (" and Qdrant's" if settings.qdrant_public_ip else "")
            + " serve plain HTTP, so API keys and code cross the internet in the clear"
        )


def check_boot_images(settings: config.Settings) -> tuple[bool, bool]:
    """Both boot image families must exist: looked up now, during preview, before any resource."""
    qdrant_project, qdrant_family = settings.qdrant_image.split("/", 1)
    embedding_checked = check_family("embedstack:image_family", settings.image_project, settings.image_family)
    qdrant_checked = check_family("embedstack:qdrant_image", qdrant_project, qdrant_family)
    return embedding_checked, qdrant_checked


def boot_images(
    settings: config.Settings, checked: tuple[bool, bool], compute_api: pulumi.Resource
) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
    """The embedding and index tiers' boot images (image families), once known to exist."""
    qdrant_project, qdrant_family = settings.qdrant_image.split("/", 1)
    embedding_image = family_image(settings.image_project, settings.image_family, checked[0], compute_api)
    qdrant_image = family_image(qdrant_project, qdrant_family, checked[1], compute_api).apply(
        lambda _: settings.qdrant_image
    )
    return embedding_image, qdrant_image


def bundle_store(
    name: str, settings: config.Settings, accounts: ServiceAccounts, opts: pulumi.ResourceOptions
) -> BundleStore:
    """The bundle built from this repository, uploaded for both tiers' VMs to read at boot."""
    bundle = bundle_build.build_bundle(settings)
    tarball = bundle_build.write_bundle(bundle, BUNDLE_DIR)
    return BundleStore(
        name, settings, bundle, tarball, readers=[accounts.embedding.email, accounts.index.email], opts=opts
    )


def boot_metadata(bundle_url: pulumi.Input[str]) -> dict[str, pulumi.Input[str]]:
    """Metadata the bootstrap reads (pulumi/bootstrap/startup.sh), the same for both tiers.

    Secrets ride in embedstack-secrets, per tier, as a Pulumi secret: encrypted in the stack state and never
    in the bundle or the repository. But metadata is readable by anyone with
    compute.instances.get or compute.instanceTemplates.get in the project, and the basic Viewer
    and Compute Viewer roles carry both: project viewers can read these keys, not only the
    people who can log in to or recreate the VMs. On the VM any local user can read them from
    169.254.169.254. Grant viewer roles on this project as you would the keys; Secret Manager
    (one more API and role) would narrow this. Each tier only gets its own keys.
    """
    return {
        "embedstack-bundle": bundle_url,
        "startup-script": bootstrap_script("startup.sh"),
        "shutdown-script": bootstrap_script("shutdown.sh"),
        "enable-oslogin": "TRUE",
    }


def embedding_metadata(settings: config.Settings, common: dict[str, pulumi.Input[str]]) -> dict[str, pulumi.Input[str]]:
    return {
        **common,
        "embedstack-tier": "embedding",
        # The bootstrap publishes a boot that failed for good as the guest attribute embedstack/boot-failure.
        "enable-guest-attributes": "TRUE",
        # The DLVM's own first-boot installer; elsewhere the nvidia_driver role installs the driver.
        **({"install-nvidia-driver": "True"} if settings.image_installs_driver else {}),
    }


def ssh_route(settings: config.Settings, public_ip: bool) -> str:
    """SSH: straight to a public address, else through IAP, else from inside the VPC."""
    return "" if public_ip else (" --tunnel-through-iap" if settings.allow_iap_ssh else " --internal-ip")


def stack_outputs(
    settings: config.Settings,
    keys: ApiKeys,
    store: BundleStore,
    snapshots: SnapshotStore,
    embedding: EmbeddingTier,
    index: IndexTier,
    ca: CertificateAuthority | None,
) -> dict[str, object]:
    """What a user needs: endpoints, keys, Roo Code's settings, and the commands to reach the VMs."""
    index_ssh = pulumi.Output.concat(
        "gcloud compute ssh ",
        index.instance.name,
        f" --zone {settings.zone} --project {settings.project}{ssh_route(settings, settings.qdrant_public_ip)}",
    )
    qdrant_url = (
        index.public_endpoint
        if index.public_endpoint is not None
        else pulumi.Output.from_input(f"http://localhost:{QDRANT_PORTS[0]}")
    )
    outputs: dict[str, object] = {
        "gateway_endpoint": embedding.endpoint,
        "gateway_address": embedding.address.address,
        "qdrant_endpoint": index.endpoint,
        "qdrant_url_for_clients": qdrant_url,
        "model": {"id": settings.model.id, "dimension": settings.model.dimension},
        "roo_code_settings": roo_code_settings(settings, embedding, qdrant_url),
        "gateway_api_key": keys.gateway,
        "qdrant_api_key": keys.qdrant,
        "bundle_url": store.url,
        "qdrant_snapshots_bucket": pulumi.Output.concat("gs://", snapshots.bucket.name),
        "instance_group": embedding.group.name,
        "index_instance": index.instance.name,
        "ssh_commands": ssh_commands(settings, embedding, index_ssh),
        # The index VM reads a new bundle at boot; this applies it now.
        "index_reconfigure_command": pulumi.Output.concat(
            index_ssh, " --command 'sudo google_metadata_script_runner startup'"
        ),
    }
    if ca is not None:
        # Public: every client needs it to verify the endpoints. Its key never leaves the state.
        outputs["ca_certificate"] = pulumi.Output.unsecret(ca.cert_pem)
        outputs["trust_ca"] = TRUST_CA
    if index.public_endpoint is None:
        ports = " ".join(f"-L {p}:localhost:{p}" for p in QDRANT_PORTS)
        outputs["qdrant_tunnel_command"] = pulumi.Output.concat(index_ssh, f" -- -N {ports}")
    return outputs


def roo_code_settings(
    settings: config.Settings, embedding: EmbeddingTier, qdrant_url: pulumi.Output[str]
) -> dict[str, object]:
    """What Roo Code's codebase indexing asks for; the keys are read with --show-secrets."""
    return {
        "embedder_provider": "OpenAI Compatible",
        "base_url": embedding.endpoint,
        "api_key": "pulumi stack output gateway_api_key --show-secrets",
        "model": settings.model.id,
        "model_dimension": settings.model.dimension,
        "qdrant_url": qdrant_url,
        "qdrant_api_key": "pulumi stack output qdrant_api_key --show-secrets",
    }


def ssh_commands(
    settings: config.Settings, embedding: EmbeddingTier, index_ssh: pulumi.Output[str]
) -> dict[str, pulumi.Input[str]]:
    project = f" --project {settings.project}"
    return {
        "index": index_ssh,
        "list_embedding_vms": pulumi.Output.concat(
            "gcloud compute instance-groups managed list-instances ",
            embedding.group.name,
            f" --region {settings.region}{project}",
        ),
        "embedding": "gcloud compute ssh <instance from list_embedding_vms> --zone <its zone>"
        f"{project}{ssh_route(settings, settings.public_ip)}",
    }


outputs = main()
