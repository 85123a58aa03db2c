"""The bundle the program uploads: what is in it, that it is byte-reproducible, and that its
content-addressed name changes exactly when its content does."""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack_mocks import (
    PROJECT_ID,
    REPO,
    USER_CONFIG,
    StackRun,
    bundle_build,
    catalog,
    config,
    stack_file_config,
)

# The fixtures stack_run, run_stack and bundle_dir (not a conftest.py: see stack_mocks.py).
pytest_plugins = ["pulumi_fixtures"]

HEALTH_CHECK_RANGES, IAP_RANGE, MODELS = catalog.HEALTH_CHECK_RANGES, catalog.IAP_RANGE, catalog.MODELS
gpu_count = catalog.gpu_count


def settings_for(stack: str, **overrides: Any) -> config.Settings:
    merged = {**stack_file_config(stack), **USER_CONFIG}
    raw = {k.split(":", 1)[1]: v for k, v in merged.items() if k.startswith("embedstack:")}
    raw.update(overrides)
    return config.parse(raw, stack, PROJECT_ID)


def uploaded_tarball(run: StackRun) -> Path:
    name = run.one("gcp:storage/bucketObject:BucketObject")["name"]
    assert run.bundle_dir is not None
    path = run.bundle_dir / Path(name).name
    assert path.is_file(), f"the program did not write {path}"
    return path


def members(tar_gz: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar_gz), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_bundle_holds_what_the_bootstrap_runs(stack_run: StackRun) -> None:
    files = members(uploaded_tarball(stack_run).read_bytes())
    for role in sorted(p.parent.parent.name for p in (REPO / "roles").glob("*/tasks/main.yml")):
        assert f"roles/{role}/tasks/main.yml" in files, role
    # startup.sh refuses a bundle without ansible/, roles/ and inventories/gcp/, and copies
    # inventories/gcp/group_vars next to its one-host inventory.
    shipped = ["ansible/site.yml", "ansible.cfg"]
    shipped += [p.relative_to(REPO).as_posix() for p in (REPO / "inventories" / "gcp").rglob("*.yml")]
    for name in shipped:
        assert files[name] == (REPO / name).read_bytes(), name
    assert any(n.startswith("inventories/gcp/group_vars/") for n in files)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in files)

    # embedding_service_wheelhouse in inventories/gcp/group_vars/embedding.yml is the bundle's wheels/.
    for pins in ("requirements.txt", "requirements-upstream.txt"):  # embedding_service picks one by engine
        assert files[f"wheels/{pins}"] == (REPO / "payload" / pins).read_bytes()
    assert b"\ntorch==" not in files["wheels/requirements-upstream.txt"]
    wheels = [n for n in files if n.startswith("wheels/") and n.endswith(".whl")]
    assert len(wheels) == 1 and wheels[0].endswith("-py3-none-any.whl")
    wheel = zipfile.ZipFile(io.BytesIO(files[wheels[0]]))
    assert {"embedstack/__init__.py", "embedstack/cli.py", "embedstack/asgi_app.py"} <= set(wheel.namelist())
    # A valid wheel: every RECORD hash matches its file.
    record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    for path, digest, _size in csv.reader(io.StringIO(wheel.read(record).decode())):
        if digest:
            algo, _, expected = digest.partition("=")
            actual = base64.urlsafe_b64encode(hashlib.new(algo, wheel.read(path)).digest()).rstrip(b"=").decode()
            assert actual == expected, path


def test_rendered_variables_hold_the_stack_values(stack_run: StackRun) -> None:
    files = members(uploaded_tarball(stack_run).read_bytes())
    stack_config = stack_file_config(stack_run.stack)
    model = MODELS[stack_config["embedstack:model"]]
    stack_vars = yaml.safe_load(files["vars.yml"])
    assert stack_vars["embedstack_stack"] == stack_run.stack
    assert stack_vars["embedstack_machine_type"] == stack_config["embedstack:machine_type"]
    # one /dev/nvidiaN per GPU of the machine type, made at every boot (role nvidia_device_nodes)
    assert stack_vars["embedstack_gpu_count"] == gpu_count(stack_config["embedstack:machine_type"]) >= 1
    assert (stack_vars["embedstack_model_id"], stack_vars["embedstack_model_dimension"]) == (model.id, model.dimension)
    assert stack_vars["firewall_admin_cidrs"] == [*USER_CONFIG["embedstack:admin_cidrs"], IAP_RANGE]
    assert stack_vars["embedstack_client_cidrs"] == USER_CONFIG["embedstack:client_cidrs"]
    assert (stack_vars["vllm_model"], stack_vars["vllm_served_model_name"]) == (model.hf_id, model.id)
    assert len(stack_vars["vllm_model_revision"]) == 40  # every recreated VM loads the same weights
    upstream = stack_vars["embedding_service_upstream_model"]
    assert (upstream["id"], upstream["dimension"], upstream["engine"]) == (model.id, model.dimension, "upstream")
    assert upstream["query_prefix"].startswith("Instruct: ") and upstream["query_prefix"].endswith("\nQuery:")
    wheel = next(n for n in files if n.endswith(".whl"))
    assert wheel == f"wheels/embedstack-{stack_vars['embedding_service_version']}-py3-none-any.whl"
    # No Qdrant release in the stack: the qdrant role installs its pinned one.
    assert not {k for k in stack_vars if k.startswith(("qdrant_deb", "qdrant_binary", "qdrant_local"))}
    # The bucket the index VM uploads Qdrant snapshots to is the one the program creates.
    bucket = stack_run.one("gcp:storage/bucket:Bucket", "-qdrant-snapshots")
    assert stack_vars["qdrant_snapshots_bucket"] == bucket["name"]


def test_vars_leave_the_tier_settings_to_the_gcp_group_vars(stack_run: StackRun) -> None:
    """vars.yml are extra vars: a name the tier group_vars set (ports, CIDR lists with the
    health-check ranges, data paths, drain timings) would be overridden for both tiers."""
    files = members(uploaded_tarball(stack_run).read_bytes())
    stack_vars = yaml.safe_load(files["vars.yml"])
    for tier in ("embedding", "qdrant"):
        tier_vars = yaml.safe_load(files[f"inventories/gcp/group_vars/{tier}.yml"])
        assert not set(stack_vars) & set(tier_vars), tier


def test_vpc_firewall_and_host_firewall_agree() -> None:
    """The VM's nftables (group_vars) admit the same health checkers the VPC rule lets through,
    and the data disk the program attaches is the one the bootstrap mounts for Qdrant."""
    shared = yaml.safe_load((REPO / "inventories" / "gcp" / "group_vars" / "all.yml").read_text())
    assert sorted(shared["embedstack_gcp_health_check_cidrs"]) == sorted(HEALTH_CHECK_RANGES)
    startup = (REPO / "pulumi" / "bootstrap" / "startup.sh").read_text()
    assert f'DATA_DISK="/dev/disk/by-id/google-{bundle_build.QDRANT_DATA_DEVICE}"' in startup
    qdrant = yaml.safe_load((REPO / "inventories" / "gcp" / "group_vars" / "qdrant.yml").read_text())
    assert f'DATA_MOUNT="{qdrant["qdrant_data_dir"]}"' in startup


def test_bundle_carries_no_secret(stack_run: StackRun) -> None:
    files = members(uploaded_tarball(stack_run).read_bytes())
    secrets = [stack_run.outputs["gateway_api_key"], stack_run.outputs["qdrant_api_key"]]
    for name, content in files.items():
        for secret in secrets:
            assert secret.encode() not in content, name
    assert not any(key.endswith(("api_key", "api_keys")) for key in yaml.safe_load(files["vars.yml"]))


def test_tarball_is_normalised(stack_run: StackRun) -> None:
    data = uploaded_tarball(stack_run).read_bytes()
    assert data[3] & 0x08 == 0, "gzip header carries a file name"
    assert data[4:8] == b"\0\0\0\0", "gzip header carries a time"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == sorted(i.name for i in infos)
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname) for i in infos} == {(bundle_build.FIXED_EPOCH, 0, 0, "", "")}
    assert {i.mode for i in infos} <= {0o644, 0o755}


def test_object_name_is_the_content_hash(stack_run: StackRun) -> None:
    path = uploaded_tarball(stack_run)
    digest = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
    assert path.name == f"embedstack-{digest[:16]}.tar.gz"


def test_building_twice_gives_the_same_bytes_and_name() -> None:
    settings = settings_for("l4")
    first = bundle_build.build_bundle(settings)
    bundle_build._WHEEL_CACHE.clear()  # rebuild the wheel too
    second = bundle_build.build_bundle(settings)
    assert first.tar_gz == second.tar_gz
    assert first.object_name == second.object_name


def _repo_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for tree in ("ansible", "roles", "payload", "inventories/gcp"):
        shutil.copytree(REPO / tree, copy / tree, ignore=ignore)
    shutil.copy2(REPO / "ansible.cfg", copy / "ansible.cfg")
    return copy


def test_name_changes_exactly_when_content_changes(tmp_path: Path) -> None:
    settings = settings_for("l4")
    repo = _repo_copy(tmp_path)
    base = bundle_build.build_bundle(settings, repo)

    # Timestamps and a stray bytecode file are not content.
    for path in (repo / "roles").rglob("*"):
        os.utime(path, (1_900_000_000, 1_900_000_000))
    (repo / "roles" / "common" / "__pycache__").mkdir()
    (repo / "roles" / "common" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    assert bundle_build.build_bundle(settings, repo).object_name == base.object_name

    # A config value and a role file are.
    other_clients = settings_for("l4", client_cidrs=["192.0.2.0/24"])
    assert bundle_build.build_bundle(other_clients, repo).object_name != base.object_name
    defaults = repo / "roles" / "common" / "defaults" / "main.yml"
    defaults.write_text(defaults.read_text() + "\n# changed\n")
    assert bundle_build.build_bundle(settings, repo).object_name != base.object_name


def test_a_missing_repository_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"the bundle needs .*ansible\.cfg"):
        bundle_build.repo_files(tmp_path)
    repo = _repo_copy(tmp_path)
    shutil.rmtree(repo / "inventories" / "gcp")
    with pytest.raises(FileNotFoundError, match=r"the bundle needs .*inventories/gcp/"):
        bundle_build.repo_files(repo)


@pytest.mark.parametrize(
    ("stack", "project"),
    [("l4", PROJECT_ID), ("a-much-longer-stack-name-than-usual", "embedstack-long-project-id30")],
)
def test_snapshot_bucket_name_is_valid(stack: str, project: str) -> None:
    settings = config.parse(
        {
            k.split(":", 1)[1]: v
            for k, v in {**stack_file_config("l4"), **USER_CONFIG}.items()
            if k.startswith("embedstack:")
        },
        stack,
        project,
    )
    name = bundle_build.snapshot_bucket_name(settings)
    assert 3 <= len(name) <= 63 and name.startswith(project) and name.endswith("-qdrant-snapshots")
    assert all(c.islower() or c.isdigit() or c in "-_" for c in name)


def test_a_stack_that_names_a_qdrant_deb_passes_it_to_the_role() -> None:
    deb = {"qdrant_deb_url": "https://example.invalid/qdrant_1.19.0-1_amd64.deb", "qdrant_deb_sha256": "c" * 64}
    stack_vars = bundle_build.render_vars(settings_for("l4", **deb), "embedstack-0.1.0-py3-none-any.whl")
    assert {k: stack_vars[k] for k in deb} == deb
    pinned = bundle_build.render_vars(settings_for("l4"), "embedstack-0.1.0-py3-none-any.whl")
    assert "qdrant_deb_url" not in pinned and "qdrant_deb_sha256" not in pinned
