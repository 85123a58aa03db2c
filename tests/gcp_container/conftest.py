"""The GCP project around the end-to-end test's VM: network, metadata server and bucket.

STAND-INS (see gcp_vm_lab.py): the GCE metadata server and Cloud Storage are
tests/standins/gce_metadata.py and tests/standins/gcs.py, bound to 10.217.0.1 on the
test's own bridge esgcp0; the VM is a Debian 12 systemd container. Everything the fixture makes
is removed before it starts (leftovers of an interrupted run) and after the module, pass or fail.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gcp_vm_lab as lab
import pytest
from standins.gce_metadata import GceMetadataStandin
from standins.gcs import GcsStandin


@dataclass
class GceProject:
    metadata: GceMetadataStandin
    storage: GcsStandin
    bundle: lab.BuiltBundle
    api_key: str
    tls: lab.Tls  # the stack's CA and the gateway's certificate; clients verify with tls.context()
    # What one test leaves for the next (they run in file order): the VM and the figures.
    vm: lab.Vm | None = None
    figures: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def gce() -> Iterator[GceProject]:
    reason = lab.skip_reason()
    if reason:
        pytest.skip(reason)
    leftovers = lab.cleanup()
    if leftovers:
        print(f"\n[gcp-e2e] removed leftovers of an earlier run: {', '.join(leftovers)}")
    try:
        lab.setup_network()
        bundle = lab.build_cpu_bundle()
        lab.prepare_wheelhouse(bundle)
        api_key = "gw-e2e-" + secrets.token_hex(12)  # test-only gateway key
        tls = lab.make_tls(lab.VM_IP)
        attributes = lab.instance_attributes(bundle, api_key, tls)
        with (
            GceMetadataStandin(
                attributes,
                bind=lab.HOST_IP,
                port=lab.METADATA_PORT,
                hostname="es-gcp-embed-1.us-central1-a.c.embedstack-e2e-test.internal",
                project_id=lab.PROJECT,
            ) as metadata,
            GcsStandin(
                metadata.token_valid, bind=lab.HOST_IP, port=lab.STORAGE_PORT, readable_buckets={lab.BUCKET}
            ) as storage,
        ):
            storage.put_object(lab.BUCKET, bundle.object_name, bundle.tar_gz)
            yield GceProject(metadata, storage, bundle, api_key, tls)
    finally:
        lab.cleanup()
