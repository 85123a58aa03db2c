"""Issue 10, GCP: what a real project refuses, run under mocks that refuse it too (stack_mocks.py).

Image families that exist, the APIs of a fresh project, names that GCE accepts for any stack name,
an index tier that survives being changed, and disk types that fit the machine series.
"""

from __future__ import annotations

import pytest

from stack_mocks import (
    IMAGE_FAMILIES,
    PROGRAM,
    PROJECT_ID,
    USER_CONFIG,
    GcpError,
    RecordingMocks,
    bundle_build,
    catalog,
    config,
    run_program,
    stack_file_config,
)

pytest_plugins = ["pulumi_fixtures"]

ConfigError = config.ConfigError
INSTANCE = "gcp:compute/instance:Instance"
DISK = "gcp:compute/disk:Disk"
SERVICE = "gcp:projects/service:Service"
README = (PROGRAM / "README.md").read_text()


def parse(stack: str = "l4", **overrides):
    raw = {
        k.split(":", 1)[1]: v
        for k, v in {**stack_file_config(stack), **USER_CONFIG}.items()
        if k.startswith("embedstack:")
    }
    return config.parse({**raw, **overrides}, stack, PROJECT_ID)


# -- 7: the image family exists, is checked during preview, and carries driver 580 ----------------


def test_the_default_is_debian_12_and_the_documented_dlvm_family_carries_the_driver_vllm_needs():
    assert (config.DEFAULTS["image_project"], config.DEFAULTS["image_family"]) == ("debian-cloud", "debian-12")
    for stack in ("l4", "a100"):
        assert "embedstack:image_family" not in stack_file_config(stack), "the committed stacks take the default"
    assert catalog.DLVM_IMAGE_FAMILY in IMAGE_FAMILIES[catalog.DLVM_IMAGE_PROJECT]
    assert catalog.DLVM_IMAGE_FAMILY.endswith(f"-nvidia-{catalog.MIN_NVIDIA_DRIVER}")
    assert catalog.DLVM_IMAGE_FAMILY in README
    assert "common-cu128-ubuntu-2404-nvidia-570" not in README.split("## Config keys")[1]


def test_both_families_are_resolved_during_preview(run_stack):
    run = run_stack("l4")
    looked_up = sorted((c.args["project"], c.args["family"]) for c in run.calls)
    # Both tiers boot debian-12: looked up once for each.
    assert looked_up == [("debian-cloud", "debian-12"), ("debian-cloud", "debian-12")]


@pytest.mark.parametrize(
    ("override", "key", "project", "family"),
    [
        (
            {
                "embedstack:image_project": "deeplearning-platform-release",
                "embedstack:image_family": "common-cu128-ubuntu-2404-nvidia-580",
            },
            "embedstack:image_family",
            "deeplearning-platform-release",
            "common-cu128-ubuntu-2404-nvidia-580",
        ),
        (
            {"embedstack:qdrant_image": "debian-cloud/debian-11x"},
            "embedstack:qdrant_image",
            "debian-cloud",
            "debian-11x",
        ),
    ],
)
def test_a_family_that_does_not_exist_fails_naming_key_family_and_project(bundle_dir, override, key, project, family):
    mocks = RecordingMocks()
    with pytest.raises(ConfigError) as failure:
        run_program("l4", {**stack_file_config("l4"), **USER_CONFIG, **override}, mocks=mocks)
    # Before anything: not even an API was enabled.
    assert [r.typ for r in mocks.resources if r.custom] == []
    message = str(failure.value)
    assert message.startswith(f"{key} '{family}' is not an image family of project '{project}'")
    assert "gcloud compute images list --project" in message


def test_a_family_below_the_driver_floor_is_refused():
    with pytest.raises(ConfigError, match=r"embedstack:image_family .*nvidia-570.* driver 570, below the 580"):
        parse(image_project=catalog.DLVM_IMAGE_PROJECT, image_family="common-cu128-ubuntu-2204-nvidia-570")


@pytest.mark.parametrize(
    ("project", "family", "image_installs"),
    [
        ("debian-cloud", "debian-12", False),
        (catalog.DLVM_IMAGE_PROJECT, catalog.DLVM_IMAGE_FAMILY, True),
    ],
)
def test_the_driver_comes_from_the_roles_unless_the_image_installs_it(bundle_dir, project, family, image_installs):
    """Debian 12: the nvidia_driver role (vars.yml); a Deep Learning VM: its own first-boot installer (metadata)."""
    cfg = {
        **stack_file_config("l4"),
        **USER_CONFIG,
        "embedstack:image_project": project,
        "embedstack:image_family": family,
    }
    run = run_program("drv", cfg)
    metadata = run.one("gcp:compute/instanceTemplate:InstanceTemplate")["metadata"]
    assert ("install-nvidia-driver" in metadata) == image_installs
    settings = parse(image_project=project, image_family=family)
    assert (
        bundle_build.render_vars(settings, "embedstack-1.0.0-py3-none-any.whl")["embedstack_install_nvidia_driver"]
        is not image_installs
    )


# -- 8: a fresh project: the APIs are enabled first and never disabled ---------------------------


def test_the_apis_are_enabled_and_left_on_destroy(stack_run):
    services = {s["service"]: s for s in stack_run.all(SERVICE)}
    assert sorted(services) == sorted(
        f"{api}.googleapis.com" for api in ("compute", "iam", "cloudresourcemanager", "iap", "storage")
    )
    for service in services.values():
        assert service["disableOnDestroy"] is False and service["project"] == PROJECT_ID


def test_every_cloud_resource_waits_for_the_apis(stack_run):
    waiting = {
        name for name, opts in stack_run.options.items() if opts is not None and opts.depends_on and "-api-" not in name
    }
    for resource in stack_run.resources:
        if resource.typ.startswith(("gcp:compute/", "gcp:storage/", "gcp:serviceaccount/", "gcp:projects/iAM")):
            assert resource.name in waiting, f"{resource.name} ({resource.typ}) does not wait for the APIs"


def test_the_readme_lists_the_quotas_a_new_project_hits():
    for quota in (
        "GPUS_ALL_REGIONS",
        "PREEMPTIBLE_NVIDIA_L4_GPUS",
        "PREEMPTIBLE_NVIDIA_A100_GPUS",
        "G2_CPUS",
        "A2_CPUS",
    ):
        assert quota in README, quota


# -- 9: any valid stack name gives valid, distinct names ----------------------------------------


def test_stack_names_with_underscore_dot_or_dash_give_valid_distinct_names(bundle_dir):
    taken: dict[str, str] = {}  # one project: the mocks refuse a name already taken (409)
    runs = {}
    for stack in ("prod_l4", "prod.l4", "prod-l4", "Prod-L4-with-a-rather-long-name.v2"):
        runs[stack] = run_program(stack, {**stack_file_config("l4"), **USER_CONFIG}, taken=taken)
    accounts = [a["accountId"] for run in runs.values() for a in run.all("gcp:serviceaccount/account:Account")]
    assert len(set(accounts)) == len(accounts) == 8
    buckets = [run.outputs["qdrant_snapshots_bucket"] for run in runs.values()]
    assert len(set(buckets)) == 4
    assert config.resource_stem("prod-l4") == "prod-l4" and config.resource_stem("l4") == "l4"


def test_the_mocks_refuse_a_name_already_taken_in_the_project(bundle_dir):
    with pytest.raises(GcpError, match="already exists"):
        run_program(
            "twice",
            {**stack_file_config("l4"), **USER_CONFIG},
            taken={"serviceAccounts/es-twice-embed": "another stack"},
        )


def test_on_a_fresh_project_the_image_is_checked_once_compute_is_enabled(bundle_dir):
    cfg = {**stack_file_config("l4"), **USER_CONFIG}
    run = run_program("fresh", cfg, fresh_project=True)
    families = [c.args["family"] for c in run.calls]
    # Refused while the API was off, then checked again after the Service was created.
    assert families.count("debian-12") == 4  # both tiers, refused and then checked again
    assert run.one("gcp:compute/instanceTemplate:InstanceTemplate")["disks"][0]["sourceImage"] == (
        "projects/debian-cloud/global/images/family/debian-12"
    )
    with pytest.raises(Exception, match=r"family/no-such-family' was not found"):
        run_program("fresh2", {**cfg, "embedstack:image_family": "no-such-family"}, fresh_project=True)


# -- 10: the index tier is safe to change ---------------------------------------------------------


def test_the_index_vm_goes_before_its_replacement_and_the_disk_is_protected(stack_run):
    [vm] = [n for n in stack_run.options if n.endswith("-index-vm")]
    [disk] = [n for n in stack_run.options if n.endswith("-index-data")]
    assert stack_run.options[vm].delete_before_replace is True
    assert stack_run.options[disk].protect is True
    assert not stack_run.one(DISK).get("snapshot")


def test_a_move_creates_the_disk_from_a_snapshot(run_stack):
    run = run_stack("l4", {"embedstack:qdrant_disk_snapshot": "qdrant-move-1", "embedstack:zone": "us-central1-b"})
    assert run.one(DISK)["snapshot"] == "qdrant-move-1" and run.one(DISK)["zone"] == "us-central1-b"
    with pytest.raises(ConfigError, match=r"embedstack:qdrant_disk_snapshot 'Bad_Snap' is not allowed"):
        parse(qdrant_disk_snapshot="Bad_Snap")


def test_the_readme_documents_the_move_and_the_group_replacement():
    assert "## Moving the index" in README and "gcloud compute snapshots create" in README
    assert "pulumi state unprotect" in README
    assert "gpu_zones" in README.split("## Changing a stack")[1]


# -- 11: machine type and disk type fit --------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "disk", "allowed"),
    [
        ("n4-standard-2", "pd-balanced", "hyperdisk-balanced"),
        ("c4-standard-4", "pd-ssd", "hyperdisk-balanced"),
        ("c3-standard-4", "pd-standard", "pd-balanced, pd-ssd, hyperdisk-balanced"),
        ("e2-standard-2", "hyperdisk-balanced", "pd-balanced, pd-ssd, pd-standard"),
    ],
)
def test_a_disk_type_the_series_refuses_is_refused_naming_both(machine, disk, allowed):
    with pytest.raises(ConfigError) as failure:
        parse(qdrant_machine_type=machine, qdrant_disk_type=disk)
    message = str(failure.value)
    assert (
        f"embedstack:qdrant_disk_type '{disk}'" in message and f"embedstack:qdrant_machine_type '{machine}'" in message
    )
    assert message.endswith(f"allowed with {machine}: {allowed}")


def test_an_n4_index_gets_hyperdisk_for_boot_and_data(run_stack):
    run = run_stack(
        "l4", {"embedstack:qdrant_machine_type": "n4-standard-2", "embedstack:qdrant_disk_type": "hyperdisk-balanced"}
    )
    assert run.one(INSTANCE)["bootDisk"]["initializeParams"]["type"] == "hyperdisk-balanced"
    assert run.one(DISK)["type"] == "hyperdisk-balanced"
