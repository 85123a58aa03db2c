"""The Google APIs the program uses, enabled in the project (a fresh project has most of them off).

Each is a `gcp.projects.Service` with `disable_on_destroy=False`: `pulumi destroy` leaves the API
on, because other workloads in the project may use it too, and turning Compute Engine off would
delete what they run. Every other component waits for these (child_options).
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
