"""Run the Pulumi program of pulumi/ under pulumi.runtime mocks and record what it creates.

Not a conftest.py on purpose: pytest keeps every top-level conftest in sys.modules as
`conftest`, and tests/payload imports names from its own one that way. Test modules import the
helpers and the program's modules (importable once pulumi/ is on sys.path) from here, and load
the fixtures with `pytest_plugins = ["pulumi_fixtures"]`.

No Pulumi CLI, no provider plugin and no GCP: the mocks answer every resource registration with
its inputs plus the few outputs a real provider computes (ids, self links, addresses, emails),
and keep every registration for the tests to inspect. Where the program could get GCP wrong they
refuse what GCP refuses (RecordingMocks): names outside GCE's alphabet or taken, a disk type the
machine series does not take, an image family that does not exist, Compute Engine calls before
its API is on. Each rule cites the provider file or Google page it comes from. pulumi-tls
resources get real keys and certificates (tls_mocks.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import runpy
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from hypothesis import settings as hypothesis_settings
from hypothesis.configuration import set_hypothesis_home_dir
from pulumi_policy.deserialize import deserialize_properties

import tls_mocks

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "pulumi"
if str(PROGRAM) not in sys.path:
    sys.path.insert(0, str(PROGRAM))

# The program's own modules, for the test modules: importable now that pulumi/ is on sys.path.
import bundle_build  # noqa: E402
import catalog  # noqa: E402
import config  # noqa: E402
from policies import rules  # noqa: E402

__all__ = ["bundle_build", "catalog", "config", "rules", "tls_mocks"]

with warnings.catch_warnings():
    # pulumi_gcp warns about its own deprecated aliases when a module first loads (lazily, on
    # first attribute access): not ours to fix, so load the ones the program uses quietly.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pulumi_gcp

    for module, member in (
        ("compute", "Network"),
        ("projects", "IAMMember"),
        ("serviceaccount", "Account"),
        ("storage", "Bucket"),
    ):
        getattr(getattr(pulumi_gcp, module), member)

# No example database, and hypothesis's caches under build/ (ignored by git), not in .hypothesis/.
set_hypothesis_home_dir(REPO / "build" / "hypothesis")
hypothesis_settings.register_profile("embedstack", database=None)
hypothesis_settings.load_profile("embedstack")

PROJECT_ID = "embedstack-test-project"
# What a user adds to a committed stack file before `pulumi up` (the README's config lines).
USER_CONFIG: dict[str, Any] = {
    "gcp:project": PROJECT_ID,
    "embedstack:client_cidrs": ["203.0.113.7/32", "198.51.100.0/24"],
    "embedstack:admin_cidrs": ["203.0.113.7/32"],
}
STACKS = ("l4", "a100")


def stack_file_config(stack: str) -> dict[str, Any]:
    return dict(yaml.safe_load((PROGRAM / f"Pulumi.{stack}.yaml").read_text())["config"])


# A stack config (namespaced keys → values) is what both the program under mocks and the config
# checks start from: built here once for the suites.
def stack_config(stack: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A committed stack as a user runs it: its stack file, USER_CONFIG, then `overrides`."""
    return {**stack_file_config(stack), **USER_CONFIG, **(overrides or {})}


def config_of(raw: Mapping[str, Any]) -> dict[str, Any]:
    """config.parse's keys (no namespace) as a stack config in the test project."""
    return {"gcp:project": PROJECT_ID, **{f"embedstack:{k}": v for k, v in raw.items()}}


def settings_of(stack_config: Mapping[str, Any], stack: str) -> config.Settings:
    """What config.load() makes of `stack_config`: its embedstack keys through config.parse."""
    raw = {k.split(":", 1)[1]: v for k, v in stack_config.items() if k.startswith("embedstack:")}
    return config.parse(raw, stack, PROJECT_ID)


# Image families that exist, per image project: what Compute Engine's images.getFromFamily finds.
# deeplearning-platform-release: the families of Google's "Choose an image" page
# (https://cloud.google.com/deep-learning-vm/docs/images, April 2026) that are still supported
# in November 2026; the CUDA 12.8 "-nvidia-570" families reached end of support on 2026-04-13
# and "common-cu128-ubuntu-2404-nvidia-570" was never listed.
IMAGE_FAMILIES: dict[str, frozenset[str]] = {
    "deeplearning-platform-release": frozenset(
        {
            "common-cu129-ubuntu-2404-nvidia-580",
            "common-cu129-ubuntu-2204-nvidia-580",
            "pytorch-2-9-cu129-ubuntu-2404-nvidia-580",
            "pytorch-2-9-cu129-ubuntu-2204-nvidia-580",
        }
    ),
    "debian-cloud": frozenset({"debian-12", "debian-13"}),
}

# Compute Engine resource names: RFC 1035 labels of at most 63 characters (terraform-provider-google
# `verify/validation.go` ValidateGCEName; Compute Engine API "Naming resources"). A resource whose
# name the program leaves out is auto-named by Pulumi: the logical name, "-" and 7 random
# characters (Pulumi docs, "Resource names: auto-naming").
GCE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# A group's VMs are named <base_instance_name>-<4 characters> (provider
# `resource_compute_region_instance_group_manager.go`, base_instance_name: "a valid RFC1035 name").
BASE_INSTANCE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,56}[a-z0-9])?$")
# Service account ids: 6-30 characters, RFC 1035 (provider `resource_google_service_account.go`,
# ValidateRFC1035Name(6, 30)).
ACCOUNT_ID = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
# Bucket names: 3-63 of [a-z0-9_.-], starting and ending with a letter or digit (Cloud Storage
# "Bucket naming requirements").
BUCKET_NAME = re.compile(r"^[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9]$")
# Compute types whose `name` is not the resource's own name.
NOT_NAMED = ("gcp:compute/diskResourcePolicyAttachment:DiskResourcePolicyAttachment",)
# Which disk types each machine series accepts (Google, "General-purpose machine family", the
# "Supported disk types" of each series, and "About Hyperdisk", "Machine series support";
# https://cloud.google.com/compute/docs/general-purpose-machines,
# https://cloud.google.com/compute/docs/disks/hyperdisks): creating an instance with any other
# disk type fails. Accelerator-optimized A2 and G2 take pd-balanced and pd-ssd.
SERIES_DISKS: dict[str, frozenset[str]] = {
    "e2": frozenset({"pd-standard", "pd-balanced", "pd-ssd"}),
    "n2": frozenset({"pd-standard", "pd-balanced", "pd-ssd"}),
    "n2d": frozenset({"pd-standard", "pd-balanced", "pd-ssd"}),
    "t2d": frozenset({"pd-standard", "pd-balanced", "pd-ssd"}),
    "c3": frozenset({"pd-balanced", "pd-ssd", "hyperdisk-balanced"}),
    "c3d": frozenset({"pd-balanced", "pd-ssd", "hyperdisk-balanced"}),
    "n4": frozenset({"hyperdisk-balanced"}),
    "c4": frozenset({"hyperdisk-balanced"}),
    "a2": frozenset({"pd-standard", "pd-balanced", "pd-ssd"}),
    "g2": frozenset({"pd-balanced", "pd-ssd"}),
}


class GcpError(Exception):
    """What the provider reports when Compute Engine, IAM or Cloud Storage refuse a request."""


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers like a provider would, as far as the program reads outputs; records everything.

    It refuses what GCP refuses, as far as the program could get it wrong: invalid or taken
    names, a disk type the machine series does not take, an image family that does not exist.
    `taken` (explicitly named, globally or project-unique names) may be shared by several runs,
    the stacks of one project.
    """

    def __init__(self, taken: dict[str, str] | None = None, fresh_project: bool = False) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.states: dict[tuple[str, str], dict] = {}  # (type, logical name) → outputs answered
        self._addresses = {"EXTERNAL": 10, "INTERNAL": 10}
        self.taken = taken if taken is not None else {}
        self.calls: list[pulumi.runtime.MockCallArgs] = []
        # A fresh project: Compute Engine answers 403 accessNotConfigured until its Service exists.
        self.compute_api_on = not fresh_project

    def _claim(self, kind: str, name: str, who: str) -> None:
        key = f"{kind}/{name}"
        if self.taken.setdefault(key, who) != who:
            raise GcpError(f"Error 409: The resource '{key}' already exists, alreadyExists (wanted by {who})")

    def _check(self, args: pulumi.runtime.MockResourceArgs, state: dict, physical: str) -> None:
        typ = args.typ
        if typ.startswith("gcp:compute/") and typ not in NOT_NAMED:
            if not GCE_NAME.match(physical) or len(physical) > 63:
                raise GcpError(
                    f"Error 400: Invalid value for field 'resource.name': '{physical}'. Must be a match of regex "
                    "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)', invalid"
                )
            if "name" in args.inputs:
                self._claim(typ, physical, args.name)
        base = state.get("baseInstanceName")
        if base is not None and not BASE_INSTANCE_NAME.match(base):
            raise GcpError(f"Error 400: Invalid value for field 'resource.baseInstanceName': '{base}', invalid")
        if typ == "gcp:serviceaccount/account:Account":
            if not ACCOUNT_ID.match(state["accountId"]):
                raise GcpError(f"Error 400: Invalid account id '{state['accountId']}': must match {ACCOUNT_ID.pattern}")
            self._claim("serviceAccounts", state["accountId"], args.name)
        if typ == "gcp:storage/bucket:Bucket" and "name" in args.inputs:
            if not BUCKET_NAME.match(physical):
                raise GcpError(f"Error 400: Invalid bucket name: '{physical}', invalid")
            self._claim("buckets", physical, args.name)
        if typ == "gcp:compute/instance:Instance":
            series = str(state.get("machineType", "")).split("-", 1)[0]
            disks = [(state.get("bootDisk") or {}).get("initializeParams", {}).get("type", "pd-standard")]
            for attached in state.get("attachedDisks") or []:
                disk = next((s for s in self.states.values() if s.get("selfLink") == attached.get("source")), None)
                if disk is not None:
                    disks.append(disk.get("type", "pd-standard"))
            for disk_type in disks:
                if series in SERIES_DISKS and disk_type not in SERIES_DISKS[series]:
                    raise GcpError(
                        f"Error 400: [{disk_type}] disk type cannot be used by [{state['machineType']}] machine type, "
                        "badRequest"
                    )

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        self.resources.append(args)
        if args.typ in tls_mocks.TYPES:
            state = tls_mocks.answer(args.typ, deserialize_properties(dict(args.inputs)))
            self.states[(args.typ, args.name)] = state
            return f"{args.name}-{state['id']}", state
        state = dict(args.inputs)
        if args.typ == "gcp:projects/service:Service" and state.get("service") == "compute.googleapis.com":
            self.compute_api_on = True
        suffix = hashlib.sha256(args.name.encode()).hexdigest()[:7]
        physical = state.get("name") or f"{args.name}-{suffix}"
        self._check(args, state, physical)
        name = state.get("name") or f"{args.name}-mock"
        state.setdefault("name", name)
        link = f"https://www.googleapis.com/compute/v1/projects/{PROJECT_ID}/mock/{name}"
        state.setdefault("selfLink", link)
        state.setdefault("selfLinkUnique", f"{link}?uniqueId=1234")
        if args.typ == "gcp:compute/address:Address":
            kind = state.get("addressType", "EXTERNAL")
            self._addresses[kind] += 1
            prefix = "203.0.113." if kind == "EXTERNAL" else "10.42.0."
            state.setdefault("address", f"{prefix}{self._addresses[kind]}")
        elif args.typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{state['accountId']}@{PROJECT_ID}.iam.gserviceaccount.com"
        elif args.typ == "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager":
            state["instanceGroup"] = f"{link}/instanceGroup"
        elif args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = f"generated-{args.name}"
        elif args.typ == "gcp:storage/bucket:Bucket":
            state["url"] = f"gs://{name}"
        self.states[(args.typ, args.name)] = state
        return f"{name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        """gcp.compute.get_image(family=…) only: any other provider function is a test failure.

        Like the provider's google_compute_image data source (terraform-provider-google
        `google/services/compute/data_source_google_compute_image.go`, Images.GetFromFamily), an
        unknown family fails with Compute Engine's 404 naming the project and the family, handed to
        the program as a failed invoke.
        """
        self.calls.append(args)
        if args.token != "gcp:compute/getImage:getImage":
            raise AssertionError(f"the program must call no provider function but getImage, called {args.token}")
        project, family = args.args.get("project"), args.args.get("family")
        if not self.compute_api_on:
            # What Compute Engine answers while its API is off in the project the call is billed to.
            return {}, [
                (
                    "family",
                    "error retrieving image information: googleapi: Error 403: Compute Engine API has not been "
                    f"used in project {PROJECT_ID} before or it is disabled. Enable it by visiting "
                    "https://console.developers.google.com/apis/api/compute.googleapis.com/overview?project="
                    f"{PROJECT_ID} then retry., accessNotConfigured",
                )
            ]
        if family not in IMAGE_FAMILIES.get(project, frozenset()):
            # A failed invoke: the program sees "invoke of gcp:compute/getImage:getImage failed: …".
            return {}, [
                (
                    "family",
                    "error retrieving image information: googleapi: Error 404: The resource "
                    f"'projects/{project}/global/images/family/{family}' was not found, notFound",
                )
            ]
        name = f"{family}-v20261101"
        link = f"https://www.googleapis.com/compute/v1/projects/{project}/global/images/{name}"
        return {"name": name, "family": family, "project": project, "selfLink": link, "status": "READY"}, []


@dataclass
class StackRun:
    stack: str
    resources: list[pulumi.runtime.MockResourceArgs]
    states: dict[tuple[str, str], dict]
    outputs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, pulumi.ResourceOptions] = field(default_factory=dict)  # logical name → options
    bundle_dir: Path | None = None  # where the program wrote the tarball it uploads
    calls: list[pulumi.runtime.MockCallArgs] = field(default_factory=list)  # provider functions called
    secret_outputs: set[str] = field(default_factory=set)  # stack outputs Pulumi keeps encrypted

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str, name_part: str = "") -> dict[str, Any]:
        """The inputs of the one resource of `typ` whose name contains `name_part`, secrets unwrapped."""
        found = [r for r in self.of_type(typ) if name_part in r.name]
        assert len(found) == 1, f"expected one {typ} named *{name_part}*, found {[r.name for r in found]}"
        return props(found[0])

    def all(self, typ: str) -> list[dict[str, Any]]:
        return [props(r) for r in self.of_type(typ)]

    def state(self, typ: str, name_part: str = "") -> dict[str, Any]:
        """What the mocked provider answered for that resource: inputs plus computed outputs."""
        found = [r for r in self.of_type(typ) if name_part in r.name]
        assert len(found) == 1, f"expected one {typ} named *{name_part}*, found {[r.name for r in found]}"
        return deserialize_properties(dict(self.states[(typ, found[0].name)]))


def props(resource: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    """A resource's inputs as a policy sees them: camelCase names, secrets unwrapped."""
    return deserialize_properties(dict(resource.inputs))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run_program(
    stack: str,
    config: Mapping[str, Any],
    secret_keys: tuple[str, ...] = (),
    taken: dict[str, str] | None = None,
    preview: bool = False,
    fresh_project: bool = False,
    mocks: RecordingMocks | None = None,
) -> StackRun:
    """Run pulumi/__main__.py as stack `stack` with `config` (namespaced keys → values).

    `taken`: names already used in the project (shared between runs to model several stacks);
    `fresh_project`: the Compute Engine API is off until the program enables it. `mocks`: your own
    RecordingMocks, to see what was registered when the program fails.
    """
    # pulumi.runtime.test runs on the thread's current event loop, which earlier tests in the same
    # process (asyncio, anyio) may have closed or unset: give each run its own.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    mocks = mocks if mocks is not None else RecordingMocks(taken, fresh_project)
    pulumi.runtime.set_mocks(mocks, project="embedstack", stack=stack, preview=preview)
    pulumi.runtime.set_all_config({k: _text(v) for k, v in config.items()}, list(secret_keys))
    run = StackRun(stack, mocks.resources, mocks.states)
    run.calls = mocks.calls

    active = [True]

    def record(args: pulumi.ResourceTransformationArgs) -> None:
        # The root stack (and its transformations) outlives this run in the process: ignore later runs.
        if active[0]:
            run.options[args.name] = args.opts

    @pulumi.runtime.test
    def program() -> pulumi.Output:
        # Resource options (protect, delete_before_replace) never reach the mocks: record them here.
        pulumi.runtime.register_stack_transformation(record)
        namespace = runpy.run_path(str(PROGRAM / "__main__.py"), run_name="embedstack_program")
        outputs = namespace["outputs"]

        async def secret_names() -> set[str]:
            return {k for k, v in outputs.items() if await pulumi.Output.from_input(v).is_secret()}

        return pulumi.Output.all(
            pulumi.Output.from_input(outputs).apply(run.outputs.update),
            pulumi.Output.from_input(asyncio.ensure_future(secret_names())).apply(run.secret_outputs.update),
        )

    try:
        program()
    finally:
        active[0] = False
        pulumi.runtime.set_all_config({}, [])
        asyncio.set_event_loop(None)
        loop.close()
    return run
