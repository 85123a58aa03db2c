"""The policy pack `pulumi preview --policy-pack pulumi/policies` runs.

Constructing PolicyPack starts the analyzer's gRPC server and blocks until the CLI ends it, so
nothing imports this file: the policies live in rules.py, which the tests import.
"""

from pulumi_policy import PolicyPack
from rules import POLICIES

PolicyPack(name="embedstack", policies=POLICIES)
