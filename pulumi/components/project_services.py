"""The Google APIs the program uses, enabled in the project (a fresh project has most of them off).

Each is a `gcp.projects.Service` with `disable_on_destroy=False`: `pulumi destroy` leaves the API
on, because other workloads in the project may use it too, and turning Compute Engine off would
delete what they run. Every other component waits for these (child_options).

Right after an API is enabled Google may still answer 403 SERVICE_DISABLED for a while
(terraform-provider-google issues #8214 and #11023; in #8214 a 10-minute sleep did not help and a
second apply did): pulumi/README.md tells the user to run `pulumi up` again, which is safe.
"""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from catalog import REQUIRED_APIS
from config import Settings


class ProjectServices(pulumi.ComponentResource):
    services: dict[str, gcp.projects.Service]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("embedstack:gcp:ProjectServices", name, None, opts)
        self.services = {
            api: gcp.projects.Service(
                f"{name}-{api.split('.', 1)[0]}",
                project=settings.project,
                service=api,
                disable_on_destroy=False,
                disable_dependent_services=False,
                opts=pulumi.ResourceOptions(parent=self),
            )
            for api in REQUIRED_APIS
        }
        self.register_outputs({"services": sorted(self.services)})
