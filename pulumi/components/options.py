"""Resource options shared by the components."""

from __future__ import annotations

import pulumi


def child_options(parent: pulumi.Resource, opts: pulumi.ResourceOptions | None) -> pulumi.ResourceOptions:
    """Options for a component's children: parented to it, and waiting for what it waits for.

    A component's depends_on is not handed down to its children by Pulumi, so the project's APIs
    (ProjectServices) would otherwise not be enabled before the first child is created.
    """
    return pulumi.ResourceOptions(parent=parent, depends_on=opts.depends_on if opts is not None else None)
