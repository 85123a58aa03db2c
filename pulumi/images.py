"""Resolve the image families the VMs boot from, during `pulumi preview`, before anything is created.

`gcp.compute.get_image(family=…, project=…)` is the provider's `google_compute_image` data source,
which calls Compute Engine's `images.getFromFamily` (terraform-provider-google
`google/services/compute/data_source_google_compute_image.go`): a family that does not exist, or
has no image that is not deprecated, comes back as a 404 "was not found". That would otherwise only
surface when the managed instance group first tries to create a VM, long after `pulumi up` ended.
The resources keep naming the family (not the image found), so a new image in the family does not
replace the Qdrant VM or roll the group by itself.
"""

from __future__ import annotations

import re

import pulumi
import pulumi_gcp as gcp

from config import ConfigError

LIST_COMMAND = "gcloud compute images list --project {project} --no-standard-images --format='value(family)' | sort -u"
_NOT_FOUND = re.compile(r"\b404\b|notFound|was not found", re.IGNORECASE)
# Compute Engine itself still off in the project the call is billed to (a fresh project).
_API_OFF = re.compile(r"SERVICE_DISABLED|accessNotConfigured|has not been used in project|API .*is disabled")


def check_family(key: str, project: str, family: str) -> bool:
    """Look `family` up in `project` now; True when it exists, False when that cannot be known yet.

    Raises ConfigError naming `key`, the family and the project when Compute Engine has no such
    family, before the program has registered any resource. False means the lookup failed only
    because the Compute Engine API is still off (a fresh project that this same `pulumi up`
    enables): family_image then repeats it during the update, once the API is on.
    """
    try:
        gcp.compute.get_image(family=family, project=project)
    except Exception as exc:  # the engine hands invoke failures over as plain exceptions
        text = str(exc)
        if _API_OFF.search(text):
            pulumi.log.warn(
                f"could not check {key} {family!r} in project {project!r} yet (the Compute Engine API is off): "
                "it is checked during `pulumi up`, after the API is enabled and before any VM is created"
            )
            return False
        if _NOT_FOUND.search(text):
            raise ConfigError(
                f"{key} {family!r} is not an image family of project {project!r} (Compute Engine answered: "
                f"{text.strip()}); allowed: a family that exists, listed by "
                f"`{LIST_COMMAND.format(project=project)}`"
            ) from None
        raise ConfigError(f"{key}: could not look up image family {family!r} in project {project!r}: {text}") from None
    return True


def family_image(project: str, family: str, checked: bool, compute_api: pulumi.Resource) -> pulumi.Output[str]:
    """`projects/<project>/global/images/family/<family>`, known to exist before anything boots from it.

    Unchecked (check_family returned False), the lookup runs again after `compute_api` is enabled,
    and whatever boots from the image waits for it.
    """
    family_url = f"projects/{project}/global/images/family/{family}"
    if checked:
        return pulumi.Output.from_input(family_url)
    found = gcp.compute.get_image_output(
        family=family, project=project, opts=pulumi.InvokeOutputOptions(depends_on=[compute_api])
    )
    return found.self_link.apply(lambda _: family_url)
