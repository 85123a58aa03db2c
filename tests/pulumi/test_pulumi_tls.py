"""Issue 11, section 1: on GCP, clients reach the stack over TLS by default.

The pulumi-tls resources run under mocks that create real keys and certificates (tls_mocks.py),
so what is checked here is what a client would check: the exported CA verifies the server
certificate for the address the client connects to.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

import pulumi
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from stack_mocks import USER_CONFIG, StackRun, config, stack_file_config, tls_mocks

pytest_plugins = ["pulumi_fixtures"]

ConfigError = config.ConfigError
TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
INSTANCE = "gcp:compute/instance:Instance"
FORWARDING = "gcp:compute/forwardingRule:ForwardingRule"
# Autohealing probes the gateway's liveness, the load balancer its readiness (components/embedding_tier.py).
CHECKS = {"gcp:compute/healthCheck:HealthCheck": "/health", "gcp:compute/regionHealthCheck:RegionHealthCheck": "/ready"}
# How the Pulumi SDK marks a secret value on the wire (pulumi/runtime/rpc.py).
SECRET_SIG = ("4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270")


def secrets_of(run: StackRun, typ: str) -> dict[str, Any]:
    return yaml.safe_load(run.one(typ)["metadata"]["embedstack-secrets"])


def verify(ca_pem: str, cert_pem: str, name: x509.GeneralName) -> x509.Certificate:
    """Real path validation (RFC 5280 with the Web PKI profile), as a client does it; raises if it fails."""
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    leaf = x509.load_pem_x509_certificate(cert_pem.encode())
    chain = PolicyBuilder().store(Store([ca])).build_server_verifier(name).verify(leaf, [])
    assert chain[-1] == ca
    return leaf


def ip(address: str) -> x509.IPAddress:
    return x509.IPAddress(ipaddress.ip_address(address))


def same_key(cert: x509.Certificate, key_pem: str) -> bool:
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(*der) == cert.public_key().public_bytes(*der)


def test_the_default_stack_publishes_no_plaintext_port(stack_run: StackRun) -> None:
    # The one public port is the gateway's, behind the load balancer: it serves HTTPS.
    assert stack_run.one(FORWARDING)["ports"] == ["8080"]
    secrets = secrets_of(stack_run, TEMPLATE)
    assert secrets["embedding_service_tls_cert"] and secrets["embedding_service_tls_key"]
    assert stack_run.outputs["gateway_endpoint"].startswith("https://")
    assert stack_run.outputs["roo_code_settings"]["base_url"] == stack_run.outputs["gateway_endpoint"]
    # Google's checkers probe over HTTPS, so the gateway needs no plain-HTTP port for them.
    for typ, path in CHECKS.items():
        check = stack_run.one(typ)
        assert check["httpsHealthCheck"] == {"port": 8080, "requestPath": path}
        assert not {"httpHealthCheck", "tcpHealthCheck", "http2HealthCheck"} & set(check)
    # Qdrant has no public address by default: reached through the IAP tunnel only.
    assert stack_run.one(INSTANCE)["networkInterfaces"][0]["accessConfigs"] == []
    assert stack_run.outputs["qdrant_url_for_clients"] == "http://localhost:6333"


def test_the_exported_ca_verifies_the_gateway_certificate_for_the_lb_address(stack_run: StackRun) -> None:
    secrets = secrets_of(stack_run, TEMPLATE)
    lb = stack_run.outputs["gateway_address"]
    leaf = verify(stack_run.outputs["ca_certificate"], secrets["embedding_service_tls_cert"], ip(lb))
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress
    ) == [ipaddress.ip_address(lb)]
    assert same_key(leaf, secrets["embedding_service_tls_key"])
    # Another address (a spoofed endpoint) is refused by the same check.
    with pytest.raises(VerificationError, match=r"(?i)subject|name|san"):
        verify(stack_run.outputs["ca_certificate"], secrets["embedding_service_tls_cert"], ip("198.51.100.1"))
    # Long-lived and never renewed by a plain `pulumi up` (the provider renews inside early_renewal_hours).
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc >= datetime.timedelta(days=4 * 365)
    assert "NODE_EXTRA_CA_CERTS" in stack_run.outputs["trust_ca"]


def test_key_material_stays_secret(stack_run: StackRun) -> None:
    assert {"gateway_api_key", "qdrant_api_key"} <= stack_run.secret_outputs
    assert "ca_certificate" not in stack_run.secret_outputs, "the CA certificate is public: clients need it"
    assert not any("PRIVATE KEY" in str(v) for v in stack_run.outputs.values())
    for typ in (TEMPLATE, INSTANCE):
        [resource] = stack_run.of_type(typ)
        # The metadata map travels as one secret because embedstack-secrets in it is one.
        raw = resource.inputs["metadata"]
        assert raw.get(SECRET_SIG[0]) == SECRET_SIG[1], f"{typ} metadata is not secret"


def test_the_certificates_do_not_change_on_a_plain_up(stack_run: StackRun) -> None:
    # Replacement comes only from changed inputs or ready_for_renewal: the inputs are the config's,
    # nothing time-dependent, and no certificate is near its renewal window.
    for key in stack_run.all(tls_mocks.PRIVATE_KEY):
        assert (key["algorithm"], key["ecdsaCurve"]) == ("ECDSA", "P256")
    [ca] = stack_run.all(tls_mocks.SELF_SIGNED_CERT)
    assert ca["isCaCertificate"] is True and ca["earlyRenewalHours"] == 0
    assert ca["validityPeriodHours"] >= 10 * 365 * 24
    for cert in stack_run.all(tls_mocks.LOCALLY_SIGNED_CERT):
        assert cert["earlyRenewalHours"] < cert["validityPeriodHours"]
    for typ in (tls_mocks.SELF_SIGNED_CERT, tls_mocks.LOCALLY_SIGNED_CERT):
        for resource in stack_run.of_type(typ):
            assert stack_run.states[(typ, resource.name)]["readyForRenewal"] is False


def test_a_public_qdrant_serves_tls_for_its_addresses_and_the_dns_names(run_stack) -> None:
    names = ["embed.example.com", "qdrant.example.com"]
    run = run_stack("l4", {"embedstack:qdrant_public_ip": True, "embedstack:tls_dns_names": names})
    ca = run.outputs["ca_certificate"]
    secrets = secrets_of(run, INSTANCE)
    assert secrets["qdrant_enable_tls"] is True
    # The snapshot upload finds Qdrant's TLS in its config by itself (role qdrant_snapshots).
    assert "qdrant_snapshots_qdrant_url" not in secrets
    external = run.state("gcp:compute/address:Address", "index-external")["address"]
    internal = run.state("gcp:compute/address:Address", "index-internal")["address"]
    assert run.outputs["qdrant_url_for_clients"] == f"https://{external}:6333"
    assert run.outputs["roo_code_settings"]["qdrant_url"] == f"https://{external}:6333"
    assert run.outputs["qdrant_endpoint"] == f"https://{internal}:6333"
    for name in (ip(external), ip(internal), ip("127.0.0.1"), *(x509.DNSName(n) for n in names)):
        leaf = verify(ca, secrets["qdrant_tls_cert_pem"], name)
    assert same_key(leaf, secrets["qdrant_tls_key_pem"])
    gateway = secrets_of(run, TEMPLATE)["embedding_service_tls_cert"]
    verify(ca, gateway, x509.DNSName("embed.example.com"))
    # Each tier holds only its own key.
    assert secrets_of(run, TEMPLATE)["embedding_service_tls_key"] != secrets["qdrant_tls_key_pem"]
    assert "qdrant_tls_key_pem" not in secrets_of(run, TEMPLATE)


def test_tls_off_without_allow_plaintext_is_refused(run_stack) -> None:
    with pytest.raises(ConfigError, match=r"^embedstack:tls is false.*allowed: .*embedstack:allow_plaintext true"):
        run_stack("l4", {"embedstack:tls": False})
    with pytest.raises(ConfigError, match=r"^embedstack:tls is false"):
        run_stack("l4", {"embedstack:tls": False, "embedstack:allow_plaintext": False})


def test_allow_plaintext_serves_http_and_warns(run_stack, monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warnings.append(message))
    run = run_stack(
        "l4", {"embedstack:tls": False, "embedstack:allow_plaintext": True, "embedstack:qdrant_public_ip": True}
    )
    assert len(warnings) == 1 and "plain HTTP" in warnings[0] and "Qdrant" in warnings[0]
    assert run.outputs["gateway_endpoint"].startswith("http://")
    assert run.outputs["qdrant_url_for_clients"].startswith("http://")
    assert not any(r.typ.startswith("tls:") for r in run.resources) and "ca_certificate" not in run.outputs
    assert "embedding_service_tls_cert" not in secrets_of(run, TEMPLATE)
    assert "qdrant_enable_tls" not in secrets_of(run, INSTANCE)
    for typ, path in CHECKS.items():
        assert run.one(typ)["httpHealthCheck"] == {"port": 8080, "requestPath": path}


def test_the_default_stack_does_not_warn(run_stack, monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warnings.append(message))
    run_stack("l4")
    assert warnings == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"tls": "perhaps"}, r"^embedstack:tls 'perhaps' is not a boolean; allowed: true, false$"),
        ({"allow_plaintext": "sometimes"}, r"^embedstack:allow_plaintext 'sometimes' is not a boolean; allowed:"),
        ({"tls_dns_names": '["*.example.com"]'}, r"^embedstack:tls_dns_names entry '\*\.example\.com' is not a DNS"),
        ({"tls_dns_names": '["a.example.com", "A.example.com"]'}, r"^embedstack:tls_dns_names .* lists a name twice"),
    ],
)
def test_bad_tls_config_names_the_key_and_the_allowed_values(raw: dict[str, str], message: str) -> None:
    base = {
        k.split(":", 1)[1]: v
        for k, v in {**stack_file_config("l4"), **USER_CONFIG}.items()
        if k.startswith("embedstack:")
    }
    with pytest.raises(ConfigError, match=message):
        config.parse({**base, **raw}, "l4", USER_CONFIG["gcp:project"])


def test_the_mocks_refuse_what_the_provider_refuses() -> None:
    with pytest.raises(tls_mocks.TlsError, match="algorithm"):
        tls_mocks.private_key({"algorithm": "DSA"})
    key = tls_mocks.private_key({"algorithm": "ECDSA"})
    assert key["ecdsaCurve"] == "P224", "the provider's default curve"
    with pytest.raises(tls_mocks.TlsError, match="Invalid Certificate Subject"):
        tls_mocks.self_signed_cert(
            {"privateKeyPem": key["privateKeyPem"], "isCaCertificate": True, "validityPeriodHours": 1}
        )
