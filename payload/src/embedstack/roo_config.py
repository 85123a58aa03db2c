"""`embedstack roo-config -i INVENTORY`: the settings to type into Roo Code's codebase indexing."""

from __future__ import annotations

import json

from embedstack.errors import ConfigError
from embedstack.health import first_key, gateway_max_tokens, gateway_model
from embedstack.inventory import in_group, load_inventory


def roo_settings(inventory: list[str]) -> tuple[dict[str, str | int], int]:
    """The settings, and the longest chunk (in tokens) the model embeds whole."""
    hosts = load_inventory(inventory)
    embedding, qdrant = in_group(hosts, "embedding"), in_group(hosts, "qdrant")
    if not embedding:
        raise ConfigError(f"inventory {', '.join(inventory)} has no host in group 'embedding'")
    gw = embedding[0]
    model, dimension = gateway_model(gw)
    settings: dict[str, str | int] = {
        "Embedder Provider": "OpenAI Compatible",
        # A load balancer's address (GCP) wins over the first host's.
        "Base URL": str(
            gw.vars.get("embedstack_gateway_url")
            or f"{'https' if gw.gateway_tls else 'http'}://{gw.address}:{gw.gateway_port}/v1"
        ),
        "API Key": first_key(gw.vars.get("embedding_service_api_keys")) or "any-non-empty-text (the gateway is open)",
        "Model": model,
        "Model Dimension": dimension,
    }
    if qdrant:
        qd = qdrant[0]
        scheme = "https" if qd.vars.get("qdrant_enable_tls") else "http"
        # Always with the port: Roo sends a port-less http:// URL to port 80.
        settings["Qdrant URL"] = str(
            qd.vars.get("embedstack_qdrant_url") or f"{scheme}://{qd.address}:{qd.qdrant_port}"
        )
        settings["Qdrant API Key"] = str(qd.vars.get("qdrant_api_key", ""))
    return settings, gateway_max_tokens(gw)


# The Node.js documentation of the variable (https://nodejs.org/api/cli.html#node_extra_ca_certsfile):
# read once at start-up, so VS Code must be started with it set.
TRUST_NOTE = (
    "The gateway serves HTTPS. Roo Code (Node.js inside VS Code) must trust the CA that signed its certificate: "
    "start VS Code with NODE_EXTRA_CA_CERTS=/path/to/ca.pem in its environment (Node reads it once, at start-up), "
    "or add the CA to your operating system's trust store. Without it Roo reports a certificate error and sends "
    "nothing."
)


# Measured with all-MiniLM-L6-v2's tokenizer on 2,000 1,000-character chunks of the Python standard
# library: median 271 tokens, 64 % longer than 256. Other tokenizers differ; the order of magnitude holds.
_CODE_CHARS_PER_TOKEN = 3.7


def chunk_note(max_tokens: int) -> str:
    chars = int(max_tokens * _CODE_CHARS_PER_TOKEN)
    return (
        f"The model embeds up to {max_tokens} tokens of a chunk, about {chars:,} characters of code. Roo Code's "
        "chunks are up to ~1,000 characters; the gateway embeds the start of a longer one and counts it in "
        "/metrics (embedstack_truncated_inputs_total)."
    )


def run_roo_config(inventory: list[str], as_json: bool) -> int:
    settings, max_tokens = roo_settings(inventory)
    if as_json:
        print(json.dumps(settings, indent=2))
        return 0
    print("Roo Code > Codebase Indexing settings:")
    width = max(len(k) for k in settings)
    for key, value in settings.items():
        print(f"  {key:<{width}}  {value}")
    print("\n" + chunk_note(max_tokens))
    if str(settings["Base URL"]).startswith("https://"):
        print("\n" + TRUST_NOTE)
    return 0
