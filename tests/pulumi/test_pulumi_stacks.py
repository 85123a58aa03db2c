"""Both committed stacks, run under mocks: what `pulumi up` would create, checked resource by resource."""

from __future__ import annotations

import ipaddress

import pytest
import yaml

from stack_mocks import (
    PROGRAM,
    PROJECT_ID,
    USER_CONFIG,
    StackRun,
    catalog,
    config,
    props,
    settings_of,
    stack_config,
    stack_file_config,
)

# The fixtures stack_run, run_stack and bundle_dir (not a conftest.py: see stack_mocks.py).
pytest_plugins = ["pulumi_fixtures"]

GPUS, MODELS = catalog.GPUS, catalog.MODELS
HEALTH_CHECK_RANGES, IAP_RANGE = catalog.HEALTH_CHECK_RANGES, catalog.IAP_RANGE
ConfigError = config.ConfigError

TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
GROUP = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
FIREWALL = "gcp:compute/firewall:Firewall"
INSTANCE = "gcp:compute/instance:Instance"
ADDRESS = "gcp:compute/address:Address"
ACCOUNT = "gcp:serviceaccount/account:Account"
BUCKET_OBJECT = "gcp:storage/bucketObject:BucketObject"
BUCKET = "gcp:storage/bucket:Bucket"
BUCKET_IAM = "gcp:storage/bucketIAMMember:BucketIAMMember"

CLIENTS = USER_CONFIG["embedstack:client_cidrs"]
ADMINS = USER_CONFIG["embedstack:admin_cidrs"]


def emails(run: StackRun) -> dict[str, str]:
    found = {}
    for account in run.all(ACCOUNT):
        tier = account["accountId"].rsplit("-", 1)[1]
        found[tier] = f"{account['accountId']}@{PROJECT_ID}.iam.gserviceaccount.com"
    return found


def test_embedding_vms_are_spot_and_deleted_on_preemption(stack_run: StackRun) -> None:
    scheduling = stack_run.one(TEMPLATE)["scheduling"]
    assert scheduling == {
        "provisioningModel": "SPOT",
        "preemptible": True,
        "automaticRestart": False,
        "onHostMaintenance": "TERMINATE",
        "instanceTerminationAction": "DELETE",
    }


def test_machine_type_carries_the_stack_gpu(stack_run: StackRun) -> None:
    config = stack_file_config(stack_run.stack)
    gpu = GPUS[config["embedstack:gpu"]]
    template = stack_run.one(TEMPLATE)
    assert template["machineType"] == config["embedstack:machine_type"]
    assert template["machineType"] in gpu.machine_types
    # A2/G2 machine types bring their GPUs; listing guest accelerators too is an API error.
    assert not template.get("guestAccelerators")
    disk = template["disks"][0]
    assert disk["sourceImage"] == "projects/debian-cloud/global/images/family/debian-12"
    assert disk["diskSizeGb"] == config["embedstack:boot_disk_gb"]


def test_firewall_opens_exactly_the_documented_ports(stack_run: StackRun) -> None:
    accounts = emails(stack_run)
    got = {}
    for resource in stack_run.of_type(FIREWALL):
        rule = props(resource)
        got[resource.name.rsplit("-allow-", 1)[1]] = (
            sorted(rule["sourceRanges"]),
            sorted(p for allow in rule["allows"] for p in allow["ports"]),
            sorted(rule["targetServiceAccounts"]),
        )
    assert got == {
        "ssh": (sorted([*ADMINS, IAP_RANGE]), ["22"], sorted(accounts.values())),
        "gateway": (sorted(CLIENTS), ["8080"], [accounts["embed"]]),
        "qdrant": (sorted(CLIENTS), ["6333", "6334"], [accounts["index"]]),
        "health": (sorted(HEALTH_CHECK_RANGES), ["8080"], [accounts["embed"]]),
    }
    for rule in stack_run.all(FIREWALL):
        assert rule["direction"] == "INGRESS"
        assert all(allow["protocol"] == "tcp" for allow in rule["allows"])
        assert all(ipaddress.ip_network(r).prefixlen > 0 for r in rule["sourceRanges"]), rule


def test_health_check_ranges_reach_only_the_gateway_port(stack_run: StackRun) -> None:
    for rule in stack_run.all(FIREWALL):
        if set(rule["sourceRanges"]) & set(HEALTH_CHECK_RANGES):
            assert [p for allow in rule["allows"] for p in allow["ports"]] == ["8080"]
            assert len(rule["targetServiceAccounts"]) == 1 and "-embed@" in rule["targetServiceAccounts"][0]


def test_template_metadata_is_the_bootstrap_contract(stack_run: StackRun) -> None:
    metadata = stack_run.one(TEMPLATE)["metadata"]
    bucket = stack_run.state(BUCKET, "-bundle")
    obj = stack_run.one(BUCKET_OBJECT)
    assert metadata["embedstack-bundle"] == f"gs://{bucket['name']}/{obj['name']}"
    assert obj["name"].startswith("bundles/embedstack-") and obj["name"].endswith(".tar.gz")
    assert metadata["embedstack-tier"] == "embedding"
    # Debian 12 installs no driver at boot: the roles do (vars.yml), the DLVM's installer stays off.
    assert "install-nvidia-driver" not in metadata
    assert metadata["startup-script"] == (PROGRAM / "bootstrap" / "startup.sh").read_text()
    assert metadata["shutdown-script"] == (PROGRAM / "bootstrap" / "shutdown.sh").read_text()
    secrets = yaml.safe_load(metadata["embedstack-secrets"])
    prefix = f"es-{stack_run.stack}"
    assert secrets.pop("embedding_service_tls_cert").startswith("-----BEGIN CERTIFICATE-----")
    assert secrets.pop("embedding_service_tls_key").startswith("-----BEGIN PRIVATE KEY-----")
    assert secrets == {
        "embedding_service_api_keys": [f"generated-{prefix}-gateway-key"],
        "vllm_api_key": f"generated-{prefix}-vllm-key",
    }
    assert stack_run.outputs["bundle_url"] == metadata["embedstack-bundle"]


def test_index_metadata_carries_only_its_own_secret(stack_run: StackRun) -> None:
    metadata = stack_run.one(INSTANCE)["metadata"]
    template_metadata = stack_run.one(TEMPLATE)["metadata"]
    assert metadata["embedstack-tier"] == "index"
    assert metadata["embedstack-bundle"] == template_metadata["embedstack-bundle"]
    assert metadata["startup-script"] == template_metadata["startup-script"]
    assert "install-nvidia-driver" not in metadata
    assert yaml.safe_load(metadata["embedstack-secrets"]) == {
        "qdrant_api_key": f"generated-es-{stack_run.stack}-qdrant-key"
    }


def test_group_autoheals_on_health_and_balances_on_ready(stack_run: StackRun) -> None:
    """Autohealing recreates a VM whose gateway does not answer /health; /ready (503 while vLLM is down, and for good
    on a VM whose driver failed twice: issue 23) only takes it out of the load balancer, so such a VM is not recreated
    from the same image in a loop, a spot GPU billed each time."""
    config = stack_file_config(stack_run.stack)
    group = stack_run.one(GROUP)
    check_run = next(r for r in stack_run.of_type("gcp:compute/healthCheck:HealthCheck"))
    check = stack_run.one("gcp:compute/healthCheck:HealthCheck")
    assert check["httpsHealthCheck"] == {"port": 8080, "requestPath": "/health"} and "httpHealthCheck" not in check
    lb_check = stack_run.one("gcp:compute/regionHealthCheck:RegionHealthCheck")
    assert lb_check["httpsHealthCheck"] == {"port": 8080, "requestPath": "/ready"}
    # The bootstrap reports a boot that failed for good as a guest attribute, which the template enables.
    template_metadata = stack_run.one(TEMPLATE)["metadata"]
    assert template_metadata["enable-guest-attributes"] == "TRUE"
    healing = group["autoHealingPolicies"]
    assert healing["healthCheck"] == f"{check_run.name}-mock-id"
    assert healing["initialDelaySec"] == 1800
    assert group["targetSize"] == config["embedstack:target_size"]
    assert group["distributionPolicyZones"] == config.get("embedstack:gpu_zones", [config["embedstack:zone"]])
    template = next(r for r in stack_run.of_type(TEMPLATE))
    assert group["versions"][0]["instanceTemplate"].endswith(f"/{template.name}-mock?uniqueId=1234")
    assert group["updatePolicy"]["maxUnavailableFixed"] == 0
    assert group["waitForInstances"] is False


def test_load_balancer_with_reserved_address(stack_run: StackRun) -> None:
    address = stack_run.one(ADDRESS, "embed-address")
    assert address["addressType"] == "EXTERNAL"
    rule = stack_run.one("gcp:compute/forwardingRule:ForwardingRule")
    lb_ip = stack_run.outputs["gateway_address"]
    assert rule["ipAddress"] == lb_ip
    assert rule["loadBalancingScheme"] == "EXTERNAL" and rule["ipProtocol"] == "TCP" and rule["ports"] == ["8080"]
    backend_run = next(r for r in stack_run.of_type("gcp:compute/regionBackendService:RegionBackendService"))
    backend = stack_run.one("gcp:compute/regionBackendService:RegionBackendService")
    assert rule["backendService"].endswith(f"/{backend_run.name}-mock")
    assert backend["loadBalancingScheme"] == "EXTERNAL" and backend["protocol"] == "TCP"
    group_run = next(r for r in stack_run.of_type(GROUP))
    assert backend["backends"][0]["group"].endswith(f"/{group_run.name}-mock/instanceGroup")
    lb_check = stack_run.one("gcp:compute/regionHealthCheck:RegionHealthCheck")
    assert lb_check["httpsHealthCheck"] == {"port": 8080, "requestPath": "/ready"} and "httpHealthCheck" not in lb_check
    assert stack_run.outputs["gateway_endpoint"] == f"https://{lb_ip}:8080/v1"


def test_index_vm_is_standard_with_a_snapshotted_persistent_disk(stack_run: StackRun) -> None:
    vm = stack_run.one(INSTANCE)
    assert vm["scheduling"]["provisioningModel"] == "STANDARD"
    assert vm["scheduling"]["preemptible"] is False
    assert vm["scheduling"]["automaticRestart"] is True
    assert not vm["machineType"].startswith(("a2-", "g2-"))
    disk_run = next(r for r in stack_run.of_type("gcp:compute/disk:Disk"))
    disk = stack_run.one("gcp:compute/disk:Disk")
    assert disk["size"] == stack_file_config(stack_run.stack)["embedstack:qdrant_disk_gb"]
    disk_link = f"https://www.googleapis.com/compute/v1/projects/{PROJECT_ID}/mock/{disk_run.name}-mock"
    assert vm["attachedDisks"] == [{"source": disk_link, "deviceName": "qdrant-data", "mode": "READ_WRITE"}]
    policy_run = next(r for r in stack_run.of_type("gcp:compute/resourcePolicy:ResourcePolicy"))
    policy = stack_run.one("gcp:compute/resourcePolicy:ResourcePolicy")
    schedule = policy["snapshotSchedulePolicy"]
    assert schedule["schedule"]["dailySchedule"] == {"daysInCycle": 1, "startTime": "03:00"}
    assert schedule["retentionPolicy"]["onSourceDiskDelete"] == "KEEP_AUTO_SNAPSHOTS"
    attachment = stack_run.one("gcp:compute/diskResourcePolicyAttachment:DiskResourcePolicyAttachment")
    assert attachment["disk"] == f"{disk_run.name}-mock" and attachment["name"] == f"{policy_run.name}-mock"
    internal = stack_run.one(ADDRESS, "index-internal")
    assert internal["addressType"] == "INTERNAL"
    assert vm["networkInterfaces"][0]["networkIp"] == stack_run.outputs["qdrant_endpoint"].split("//")[1].split(":")[0]
    assert stack_run.outputs["qdrant_endpoint"].endswith(":6333")


def test_no_public_addresses_on_vms_by_default(stack_run: StackRun) -> None:
    assert stack_run.one(TEMPLATE)["networkInterfaces"][0]["accessConfigs"] == []
    assert stack_run.one(INSTANCE)["networkInterfaces"][0]["accessConfigs"] == []
    assert stack_run.outputs["qdrant_url_for_clients"] == "http://localhost:6333"
    assert "-L 6333:localhost:6333" in stack_run.outputs["qdrant_tunnel_command"]
    assert "--tunnel-through-iap" in stack_run.outputs["ssh_commands"]["index"]


def test_service_accounts_are_least_privilege(stack_run: StackRun) -> None:
    accounts = emails(stack_run)
    project_roles = sorted((m["role"], m["member"]) for m in stack_run.all("gcp:projects/iAMMember:IAMMember"))
    assert project_roles == sorted(
        (role, f"serviceAccount:{email}")
        for email in accounts.values()
        for role in ("roles/logging.logWriter", "roles/monitoring.metricWriter")
    )
    bucket = stack_run.state(BUCKET, "-bundle")
    snapshots = stack_run.state(BUCKET, "-qdrant-snapshots")
    grants = stack_run.all(BUCKET_IAM)
    readers = [r for r in grants if r["role"] == "roles/storage.objectViewer"]
    assert sorted(r["member"] for r in readers) == sorted(f"serviceAccount:{e}" for e in accounts.values())
    assert {r["bucket"] for r in readers} == {bucket["name"]}
    # The index account alone may create (not read, list or delete) objects in the snapshot bucket.
    others = [(r["role"], r["bucket"], r["member"]) for r in grants if r not in readers]
    assert others == [("roles/storage.objectCreator", snapshots["name"], f"serviceAccount:{accounts['index']}")]
    assert bucket["uniformBucketLevelAccess"] is True and bucket["publicAccessPrevention"] == "enforced"
    iam_types = {r.typ for r in stack_run.resources if "iam" in r.typ.lower()}
    assert iam_types == {"gcp:projects/iAMMember:IAMMember", "gcp:storage/bucketIAMMember:BucketIAMMember"}
    assert stack_run.one(TEMPLATE)["serviceAccount"]["email"] == accounts["embed"]
    assert stack_run.one(INSTANCE)["serviceAccount"]["email"] == accounts["index"]


def test_roo_code_settings_and_model(stack_run: StackRun) -> None:
    model = MODELS[stack_file_config(stack_run.stack)["embedstack:model"]]
    roo = stack_run.outputs["roo_code_settings"]
    assert roo["base_url"] == stack_run.outputs["gateway_endpoint"]
    assert (roo["model"], roo["model_dimension"]) == (model.id, model.dimension)
    assert roo["qdrant_url"].endswith(":6333")
    assert stack_run.outputs["gateway_api_key"] == f"generated-es-{stack_run.stack}-gateway-key"


def test_public_addresses_when_configured(run_stack) -> None:
    run = run_stack("l4", {"embedstack:public_ip": True, "embedstack:qdrant_public_ip": True})
    assert run.one(TEMPLATE)["networkInterfaces"][0]["accessConfigs"] == [{}]
    external = run.state(ADDRESS, "index-external")
    assert run.one(INSTANCE)["networkInterfaces"][0]["accessConfigs"] == [{"natIp": external["address"]}]
    assert run.outputs["qdrant_url_for_clients"] == f"https://{external['address']}:6333"
    assert "qdrant_tunnel_command" not in run.outputs
    assert "--tunnel-through-iap" not in run.outputs["ssh_commands"]["index"]


def test_existing_network_is_used_not_created(run_stack) -> None:
    run = run_stack(
        "l4", {"embedstack:network": "shared-vpc", "embedstack:subnetwork": "gpu", "embedstack:create_nat": False}
    )
    assert not run.of_type("gcp:compute/network:Network") and not run.of_type("gcp:compute/routerNat:RouterNat")
    subnet = "projects/embedstack-test-project/regions/us-central1/subnetworks/gpu"
    assert run.one(TEMPLATE)["networkInterfaces"][0]["subnetwork"] == subnet
    assert {r["network"] for r in run.all(FIREWALL)} == {"projects/embedstack-test-project/global/networks/shared-vpc"}


def test_secrets_set_by_the_user_are_used(run_stack) -> None:
    run = run_stack(
        "a100",
        {"embedstack:gateway_api_key": "user-chosen-gateway-key-0123456789"},
        secret_keys=("embedstack:gateway_api_key",),
    )
    # Pulumi registers resources concurrently: their order under the mocks is not fixed.
    assert sorted(r.name for r in run.of_type("random:index/randomPassword:RandomPassword")) == [
        "es-a100-qdrant-key",
        "es-a100-vllm-key",
    ]
    assert run.outputs["gateway_api_key"] == "user-chosen-gateway-key-0123456789"
    secrets = yaml.safe_load(run.one(TEMPLATE)["metadata"]["embedstack-secrets"])
    assert secrets["embedding_service_api_keys"] == ["user-chosen-gateway-key-0123456789"]


def test_a_secret_in_plain_text_is_refused(run_stack) -> None:
    with pytest.raises(ConfigError, match=r"embedstack:qdrant_api_key is stored in plain text.*--secret"):
        run_stack("l4", {"embedstack:qdrant_api_key": "in-the-clear-0123456789"})


def test_gpu_stack_values_reach_the_program(run_stack) -> None:
    run = run_stack("l4", {"embedstack:target_size": 3, "embedstack:machine_type": "g2-standard-16"})
    assert run.one(GROUP)["targetSize"] == 3
    assert run.one(TEMPLATE)["machineType"] == "g2-standard-16"


def test_qdrant_snapshots_go_to_a_private_bucket_with_retention(stack_run: StackRun) -> None:
    settings = settings_of(stack_config(stack_run.stack), stack_run.stack)
    bucket = stack_run.one(BUCKET, "-qdrant-snapshots")
    assert bucket["name"] == f"{PROJECT_ID}-{stack_run.stack}-qdrant-snapshots"
    assert bucket["uniformBucketLevelAccess"] is True and bucket["publicAccessPrevention"] == "enforced"
    assert bucket["location"] == settings.region.upper()
    assert bucket["labels"] == {"app": "embedstack", "stack": stack_run.stack, "tier": "index"}
    assert bucket["lifecycleRules"] == [
        {"action": {"type": "Delete"}, "condition": {"age": settings.snapshot_retention_days}}
    ]
    assert not bucket.get("forceDestroy"), "backups are not deleted with the stack"
    assert stack_run.outputs["qdrant_snapshots_bucket"] == f"gs://{bucket['name']}"
    # The disk snapshot schedule stays beside it.
    assert stack_run.one("gcp:compute/resourcePolicy:ResourcePolicy")["snapshotSchedulePolicy"]


def test_snapshot_retention_reaches_the_lifecycle_rule(run_stack) -> None:
    run = run_stack("l4", {"embedstack:snapshot_retention_days": 30})
    assert run.one(BUCKET, "-qdrant-snapshots")["lifecycleRules"][0]["condition"] == {"age": 30}
