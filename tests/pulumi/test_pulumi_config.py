"""The config space, explored with hypothesis: every valid combination builds, and every invalid
one fails with a message naming the key and what is allowed."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stack_mocks import (
    PROJECT_ID,
    USER_CONFIG,
    catalog,
    config,
    config_of,
    run_program,
    settings_of,
    stack_file_config,
)

# The fixtures stack_run, run_stack and bundle_dir (not a conftest.py: see stack_mocks.py).
pytest_plugins = ["pulumi_fixtures"]

GPUS, MODELS = catalog.GPUS, catalog.MODELS
MAX_TARGET_SIZE, ConfigError = config.MAX_TARGET_SIZE, config.ConfigError

# What every stack needs besides the committed values: the user's own addresses (the Qdrant release is pinned).
REQUIRED = {"client_cidrs": json.dumps(["203.0.113.7/32"])}
DEB = {"qdrant_deb_url": "https://example.invalid/qdrant_1.19.0-1_amd64.deb", "qdrant_deb_sha256": "a" * 64}
EXAMPLES = settings(max_examples=150, deadline=None)


def parse(**raw: Any) -> config.Settings:
    return settings_of(as_stack_config(raw), "test")


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


cidrs = st.builds(
    lambda addr, prefix: str(ipaddress.ip_network((addr, prefix), strict=False)),
    st.integers(0, 2**32 - 1),
    st.integers(1, 32),
)


@st.composite
def valid_raw(draw: st.DrawFn) -> dict[str, Any]:
    gpu = GPUS[draw(st.sampled_from(sorted(GPUS)))]
    zone = draw(st.sampled_from(gpu.zones))
    region_zones = [z for z in gpu.zones if region_of(z) == region_of(zone)]
    raw: dict[str, Any] = {
        "gpu": gpu.key,
        "machine_type": draw(st.sampled_from(gpu.machine_types)),
        "zone": zone,
        "target_size": str(draw(st.integers(1, MAX_TARGET_SIZE))),
        "model": draw(st.sampled_from([m.id for m in MODELS.values() if m.min_gpu_memory_gb <= gpu.memory_gb])),
        "client_cidrs": json.dumps(draw(st.lists(cidrs, min_size=1, max_size=4, unique=True))),
        "admin_cidrs": json.dumps(draw(st.lists(cidrs, max_size=3, unique=True))),
        "public_ip": draw(st.sampled_from(["true", "false"])),
        "qdrant_public_ip": draw(st.sampled_from(["true", "false"])),
        "boot_disk_gb": str(draw(st.integers(100, 4096))),
        "qdrant_disk_gb": str(draw(st.integers(10, 65536))),
        "snapshot_start_time": f"{draw(st.integers(0, 23)):02d}:00",
    }
    if draw(st.booleans()):
        raw["region"] = region_of(zone)
    if draw(st.booleans()):
        raw["gpu_zones"] = json.dumps(draw(st.lists(st.sampled_from(region_zones), min_size=1, unique=True)))
    return raw


@EXAMPLES
@given(valid_raw())
def test_valid_combinations_parse(raw: dict[str, Any]) -> None:
    s = parse(**raw)
    assert s.gpu.key == raw["gpu"] and s.machine_type == raw["machine_type"] in s.gpu.machine_types
    assert s.region == region_of(raw["zone"]) and s.zone == raw["zone"]
    assert s.gpu_zones == tuple(json.loads(raw.get("gpu_zones", json.dumps([raw["zone"]]))))
    assert all(z in s.gpu.zones and region_of(z) == s.region for z in s.gpu_zones)
    assert s.target_size == int(raw["target_size"])
    assert s.client_cidrs == tuple(json.loads(raw["client_cidrs"]))
    assert s.model.id == raw["model"]


@EXAMPLES
@given(st.sampled_from(sorted(GPUS)), st.sampled_from(sorted(GPUS)), st.data())
def test_machine_type_of_another_gpu_is_refused(gpu: str, other: str, data: st.DataObject) -> None:
    assume(gpu != other)
    machine = data.draw(st.sampled_from(GPUS[other].machine_types))
    with pytest.raises(ConfigError) as failure:
        parse(gpu=gpu, machine_type=machine, zone=GPUS[gpu].zones[0])
    message = str(failure.value)
    assert message.startswith(f"embedstack:machine_type {machine!r}")
    assert f"allowed for {gpu}: {', '.join(GPUS[gpu].machine_types)}" in message


def test_a100_on_g2_names_the_allowed_machine_types() -> None:
    with pytest.raises(ConfigError) as failure:
        parse(gpu="a100-40gb", machine_type="g2-standard-8", zone="us-central1-a")
    assert str(failure.value) == (
        "embedstack:machine_type 'g2-standard-8' carries gpu 'l4', not 'a100-40gb'; "
        "allowed for a100-40gb: a2-highgpu-1g, a2-highgpu-2g, a2-highgpu-4g, a2-highgpu-8g"
    )


@EXAMPLES
@given(st.lists(cidrs, max_size=3, unique=True), st.booleans())
def test_whole_internet_clients_need_the_explicit_flag(others: list[str], allow: bool) -> None:
    clients = json.dumps([*others, "0.0.0.0/0"])
    if allow:
        assert "0.0.0.0/0" in parse(client_cidrs=clients, allow_public_clients="true").client_cidrs
        return
    with pytest.raises(ConfigError, match=r"^embedstack:client_cidrs entry '0\.0\.0\.0/0' .*allow_public_clients"):
        parse(client_cidrs=clients)


@given(st.booleans())
def test_ssh_is_never_open_to_the_whole_internet(allow_public_clients: bool) -> None:
    with pytest.raises(ConfigError, match=r"^embedstack:admin_cidrs entry '0\.0\.0\.0/0' .*allowed:"):
        parse(admin_cidrs='["0.0.0.0/0"]', allow_public_clients=str(allow_public_clients).lower())


zone_names = st.from_regex(r"\A[a-z]{2,12}-[a-z]{3,10}[0-9]{1,2}-[a-z]\Z")


@EXAMPLES
@given(st.sampled_from(sorted(GPUS)), st.one_of(zone_names, st.text(max_size=20)))
def test_unknown_zone_is_refused_with_the_zones_offering_the_gpu(gpu: str, zone: str) -> None:
    assume(zone.strip() not in GPUS[gpu].zones)
    with pytest.raises(ConfigError) as failure:
        parse(gpu=gpu, zone=zone)
    message = str(failure.value)
    assert message.startswith("embedstack:zone ")
    assert f"allowed for {gpu}: {', '.join(GPUS[gpu].zones)}" in message


@EXAMPLES
@given(st.sampled_from(sorted(GPUS)), st.data())
def test_zone_outside_the_region_is_refused(gpu: str, data: st.DataObject) -> None:
    zones = GPUS[gpu].zones
    zone = data.draw(st.sampled_from(zones))
    regions = sorted({region_of(z) for z in zones} - {region_of(zone)})
    region = data.draw(st.sampled_from(regions))
    with pytest.raises(ConfigError) as failure:
        parse(gpu=gpu, zone=zone, region=region)
    message = str(failure.value)
    assert message.startswith(f"embedstack:zone {zone!r} is not in embedstack:region {region!r}")
    in_region = [z for z in zones if region_of(z) == region]
    assert message.endswith(f"allowed zones for {gpu} in {region}: {', '.join(in_region)}")


@EXAMPLES
@given(st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_TARGET_SIZE + 1)))
def test_target_size_out_of_range_is_refused(size: int) -> None:
    with pytest.raises(ConfigError) as failure:
        parse(target_size=str(size))
    assert str(failure.value) == (
        f"embedstack:target_size {str(size)!r} is not allowed; allowed: an integer from 1 to {MAX_TARGET_SIZE}"
    )


@EXAMPLES
@given(st.text(min_size=1, max_size=30))
def test_unknown_model_lists_the_served_models(model: str) -> None:
    assume(model.strip() not in MODELS)
    with pytest.raises(ConfigError) as failure:
        parse(model=model)
    assert str(failure.value).startswith("embedstack:model ")
    assert str(failure.value).endswith(f"allowed: {', '.join(MODELS)}")


@EXAMPLES
@given(st.text(min_size=1, max_size=30))
def test_malformed_cidr_is_refused(text: str) -> None:
    try:
        ipaddress.IPv4Network(text.strip(), strict=True)
        assume(False)
    except ValueError:
        pass
    assume("," not in text and text.strip())
    with pytest.raises(ConfigError, match=r"^embedstack:client_cidrs .*allowed: "):
        parse(client_cidrs=json.dumps([text]))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"machine_typ": "g2-standard-8"},
            r"^embedstack:machine_typ is not a known key; allowed: .*embedstack:machine_type",
        ),
        ({"gpu": "h100"}, r"^embedstack:gpu 'h100' is not allowed; allowed: l4, a100-40gb, a100-80gb$"),
        ({"client_cidrs": "[]"}, r"^embedstack:client_cidrs is empty; allowed: one or more IPv4 networks"),
        ({"client_cidrs": '["10.0.0.1/8"]'}, r"^embedstack:client_cidrs entry '10.0.0.1/8' is not a network"),
        ({"client_cidrs": '["2001:db8::/32"]'}, r"^embedstack:client_cidrs entry '2001:db8::/32' is IPv6"),
        ({"admin_cidrs": "[]", "allow_iap_ssh": "false"}, r"^embedstack:admin_cidrs is empty .*nobody could log in"),
        ({"gpu_zones": '["us-central1-a", "us-east1-b"]'}, r"^embedstack:gpu_zones entry 'us-east1-b' is not a zone"),
        ({"network": "Bad_Name"}, r"^embedstack:network 'Bad_Name' is not a network name; allowed:"),
        ({"network": "shared"}, r"^embedstack:subnetwork '' is not a subnetwork name; allowed:.*required when"),
        ({"qdrant_machine_type": "a2-highgpu-1g"}, r"^embedstack:qdrant_machine_type 'a2-highgpu-1g' .*family e2"),
        ({**DEB, "qdrant_deb_sha256": "abc"}, r"^embedstack:qdrant_deb_sha256 'abc' is not allowed; allowed: 64 hex"),
        ({"qdrant_deb_url": DEB["qdrant_deb_url"]}, r"^embedstack:qdrant_deb_sha256 '' is not allowed; allowed: 64"),
        ({"qdrant_deb_sha256": "a" * 64}, r"^embedstack:qdrant_deb_sha256 is set without embedstack:qdrant_deb_url"),
        ({"qdrant_deb_url": "http://x/q.deb"}, r"^embedstack:qdrant_deb_url 'http://x/q.deb' .*empty \(the pinned"),
        ({"snapshot_start_time": "03:30"}, r"^embedstack:snapshot_start_time '03:30' .*a whole hour"),
        ({"public_ip": "maybe"}, r"^embedstack:public_ip 'maybe' is not a boolean; allowed: true, false$"),
        ({"boot_disk_gb": "40"}, r"^embedstack:boot_disk_gb '40' is not allowed; allowed: an integer from 100"),
    ],
)
def test_each_bad_value_names_its_key_and_the_allowed_values(raw: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(**raw)


def test_the_qdrant_release_needs_no_setting_and_a_deb_is_an_override() -> None:
    pinned = parse()
    assert (pinned.qdrant_deb_url, pinned.qdrant_deb_sha256) == ("", "")
    chosen = parse(**{**DEB, "qdrant_deb_sha256": "A" * 64})
    assert (chosen.qdrant_deb_url, chosen.qdrant_deb_sha256) == (DEB["qdrant_deb_url"], "a" * 64)


def test_required_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"^embedstack:client_cidrs is required"):
        config.parse({}, "test", PROJECT_ID)
    with pytest.raises(ConfigError, match=r"^gcp:project '' is not a project id; .*pulumi config set gcp:project"):
        config.parse(REQUIRED, "test", "")


# --- the same space through the whole program under mocks ------------------------------------


def as_stack_config(raw: dict[str, Any]) -> dict[str, Any]:
    return config_of({**REQUIRED, **raw})


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(valid_raw())
def test_valid_combinations_build_the_whole_stack(bundle_dir, raw: dict[str, Any]) -> None:
    run = run_program("hypo", as_stack_config(raw))
    template = run.one("gcp:compute/instanceTemplate:InstanceTemplate")
    assert template["machineType"] == raw["machine_type"]
    group = run.one("gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager")
    assert group["targetSize"] == int(raw["target_size"])
    assert run.outputs["model"]["id"] == raw["model"]
    assert (template["networkInterfaces"][0]["accessConfigs"] != []) == (raw["public_ip"] == "true")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"embedstack:machine_type": "g2-standard-8"}, r"^embedstack:machine_type 'g2-standard-8' .*a2-highgpu-1g"),
        ({"embedstack:client_cidrs": ["0.0.0.0/0"]}, r"^embedstack:client_cidrs entry '0\.0\.0\.0/0'"),
        ({"embedstack:zone": "mars-north1-a"}, r"^embedstack:zone 'mars-north1-a' .*allowed for a100-40gb: "),
        ({"embedstack:target_size": 0}, r"^embedstack:target_size '0' is not allowed; allowed: an integer from 1"),
        ({"embedstack:machin_type": "a2-highgpu-1g"}, r"^embedstack:machin_type is not a known key"),
    ],
)
def test_invalid_config_stops_the_program_before_any_resource(run_stack, override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        run_stack("a100", override)


def test_committed_stacks_hold_no_secret_and_only_known_keys() -> None:
    for stack in ("l4", "a100"):
        stack_config = stack_file_config(stack)
        for key in stack_config:
            namespace, name = key.split(":", 1)
            assert namespace in ("embedstack", "gcp"), key
            if namespace == "embedstack":
                assert name in config.DEFAULTS, key
                assert name not in config.SECRET_KEYS
        assert not any(re.search(r"secure:|api_key", json.dumps(v)) for v in stack_config.values())
    assert set(USER_CONFIG) == {
        "gcp:project",
        "embedstack:client_cidrs",
        "embedstack:admin_cidrs",
    }


@pytest.mark.parametrize(
    ("machine_type", "gpus"),
    [("g2-standard-8", 1), ("g2-standard-24", 2), ("g2-standard-48", 4), ("g2-standard-96", 8),
     ("a2-highgpu-1g", 1), ("a2-highgpu-8g", 8), ("a2-ultragpu-4g", 4)],
)  # fmt: skip
def test_every_machine_type_knows_its_gpu_count(machine_type, gpus):
    """The VM's boot unit makes one /dev/nvidiaN per GPU (Google's "GPU machine types" tables)."""
    import catalog

    assert catalog.gpu_count(machine_type) == gpus
    every = [m for gpu in catalog.GPUS.values() for m in gpu.machine_types]
    assert all(catalog.gpu_count(m) >= 1 for m in every)
