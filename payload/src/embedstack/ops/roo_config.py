"""`embedstack roo-config -i INVENTORY`: the settings to type into Roo Code's codebase indexing."""

from __future__ import annotations

import json
import sys

from embedstack.client_setup import trust_ca_steps
from embedstack.errors import ConfigError
from embedstack.ops.health import check_host, params_for
from embedstack.ops.inventory import Host, first_key, gateway_max_tokens, gateway_model, in_group, load_inventory


def roo_settings(inventory: list[str]) -> tuple[dict[str, str | int], int]:
    """The settings, and the longest chunk (in tokens) the model embeds whole."""
    settings, max_tokens, _ = _settings_and_qdrant_host(inventory)
    return settings, max_tokens


def _settings_and_qdrant_host(inventory: list[str]) -> tuple[dict[str, str | int], int, Host | None]:
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
    return settings, gateway_max_tokens(gw), qdrant[0] if qdrant else None


def qdrant_warning(host: Host) -> str | None:
    """None when Qdrant answers on the host; else the paragraph that says it does not, why, and what fixes it.

    Read over SSH as `embedstack health` reads it (the unit, /readyz, and the record the qdrant role leaves where it
    installed no Qdrant), so the settings are never printed as if Roo Code could use them when it cannot."""
    params = {"only": ["qdrant"], "qdrant": {**params_for(host)["qdrant"], "canary": False}}
    checks = check_host(host, params)
    bad = [c for c in checks if not c.ok]
    if not bad:
        return None
    if any(c.check == "ssh" for c in bad):
        return f"Could not check whether Qdrant runs on {host.name}: {bad[0].detail}."
    if any(c.missing for c in bad):
        return (
            f"Qdrant is NOT running on {host.name}, so Roo Code's indexing fails at its first write: it is "
            + "; ".join(c.detail for c in bad if c.missing)
        )
    return f"Qdrant on {host.name} is not answering, so Roo Code's indexing fails: " + "; ".join(
        f"{c.check}: {c.detail}" for c in bad
    )


TRUST_NOTE = (
    "The gateway serves HTTPS. Roo Code (Node.js inside VS Code) must trust the CA that signed its certificate: "
    + trust_ca_steps("/path/to/ca.pem")
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


def messages_note(model: str) -> str:
    """What two of Roo Code's messages mean with this gateway (Roo maps every 404 to "Invalid API endpoint", and
    an empty Model field sends OpenAI's default model name)."""
    return (
        f'If Roo reports "Invalid API endpoint", the Model field is not {model!r}: Roo says that for every 404, '
        "and the gateway answers 404 to a model it does not serve. Leave the Model field empty and Roo sends "
        "text-embedding-3-small, which the gateway does not serve either."
    )


def run_roo_config(inventory: list[str], as_json: bool) -> int:
    settings, max_tokens, qdrant_host = _settings_and_qdrant_host(inventory)
    warning = qdrant_warning(qdrant_host) if qdrant_host else None
    if as_json:
        print(json.dumps(settings, indent=2))
        if warning:  # stdout stays the settings alone, for scripts
            print(f"embedstack roo-config: {warning}", file=sys.stderr)
        return 0
    print("Roo Code > Codebase Indexing settings:")
    width = max(len(k) for k in settings)
    for key, value in settings.items():
        print(f"  {key:<{width}}  {value}")
    if warning:
        print("\n" + warning)
    print("\n" + chunk_note(max_tokens))
    print("\n" + messages_note(str(settings["Model"])))
    if str(settings["Base URL"]).startswith("https://"):
        print("\n" + TRUST_NOTE)
    return 0
