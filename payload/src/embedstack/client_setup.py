"""What a client needs from a deployed gateway: its port, and how Roo Code comes to trust the stack's CA.

Standard library only, and nothing imported from embedstack: the Pulumi program, whose environment does
not install the payload, loads this file by its path (pulumi/catalog.py), so `embedstack roo-config`, the
inventory reader and the GCP stack's outputs say the same thing from one place.
"""

from __future__ import annotations

# The gateway's port wherever it runs: `embedstack serve`'s default, what roles/embedding_service deploys
# (embedding_service_port; a fast test holds the two equal) and what the GCP firewall and load balancer open.
GATEWAY_PORT = 8080


def trust_ca_steps(ca_path: str) -> str:
    """How Roo Code (Node.js inside VS Code) trusts a CA kept at ca_path.

    Node reads NODE_EXTRA_CA_CERTS once, at start-up (https://nodejs.org/api/cli.html#node_extra_ca_certsfile),
    so VS Code must be started with it set.
    """
    return (
        f"start VS Code with NODE_EXTRA_CA_CERTS={ca_path} in its environment (Node reads it once, at start-up), "
        "or add the CA to your operating system's trust store. Without it Roo reports a certificate error and "
        "sends nothing."
    )
