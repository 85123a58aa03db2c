"""The instance metadata attribute that carries a tier's secrets to its VMs."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
import yaml


def secrets_yaml(values: Mapping[str, pulumi.Input[object]]) -> pulumi.Output[str]:
    """`embedstack-secrets`: the ansible variables the bootstrap passes as extra vars, a Pulumi secret.

    pulumi/bootstrap/startup.sh (write_secrets) writes it to a 0600 file and hands it to
    ansible-playbook with -e @file.
    """
    names = list(values)
    return pulumi.Output.secret(
        pulumi.Output.all(*values.values()).apply(
            lambda resolved: yaml.safe_dump(dict(zip(names, resolved, strict=True)), sort_keys=True)
        )
    )
