"""The stack's own certificate authority and the server certificates it issues (pulumi-tls).

Created once and kept in the stack state: a plain `pulumi up` changes nothing. The provider
(terraform-provider-tls) replaces a certificate only when an input changes or, at a refresh or
plan, when it is within `early_renewal_hours` of its end (`ready_for_renewal`). So the CA lives
ten years with no early renewal, and a server certificate five years, renewed by the first
`pulumi up` in its last 30 days; a renewed server certificate rolls its tier, a renewed CA must
be handed to the clients again. Private keys are Pulumi secrets (the provider marks them so, and
they only leave this module inside the tiers' secret metadata); certificates are public.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from components.options import child_options
from config import Settings

CA_VALIDITY_HOURS = 10 * 365 * 24
SERVER_VALIDITY_HOURS = 5 * 365 * 24
SERVER_EARLY_RENEWAL_HOURS = 30 * 24
# P-256: the provider's default curve is P-224, which rustls (Qdrant) and browsers refuse.
KEY = {"algorithm": "ECDSA", "ecdsa_curve": "P256"}
CA_USES = ["cert_signing", "crl_signing", "digital_signature"]
# An ECDSA key signs the handshake; it never enciphers a key, so no key_encipherment.
SERVER_USES = ["digital_signature", "server_auth"]


@dataclass(frozen=True)
class ServerCertificate:
    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]  # PKCS#8 PEM, a secret: what both Python's ssl and rustls read


class CertificateAuthority(pulumi.ComponentResource):
    key: tls.PrivateKey
    cert: tls.SelfSignedCert
    cert_pem: pulumi.Output[str]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("embedstack:gcp:CertificateAuthority", name, None, opts)
        self._settings = settings
        child = child_options(self, opts)
        self.key = tls.PrivateKey(f"{name}-ca-key", **KEY, opts=child)
        self.cert = tls.SelfSignedCert(
            f"{name}-ca",
            private_key_pem=self.key.private_key_pem,
            subject=tls.SelfSignedCertSubjectArgs(
                common_name=f"embedstack {settings.stack} CA", organization="embedstack"
            ),
            is_ca_certificate=True,
            set_subject_key_id=True,
            allowed_uses=CA_USES,
            validity_period_hours=CA_VALIDITY_HOURS,
            early_renewal_hours=0,
            opts=child,
        )
        self.cert_pem = self.cert.cert_pem
        self.register_outputs({"cert_pem": self.cert_pem})

    def issue(
        self,
        name: str,
        common_name: str,
        ip_addresses: Sequence[pulumi.Input[str]],
        parent: pulumi.Resource,
    ) -> ServerCertificate:
        """A key and a certificate for these addresses plus embedstack:tls_dns_names, children of `parent`."""
        child = pulumi.ResourceOptions(parent=parent)
        key = tls.PrivateKey(f"{name}-tls-key", **KEY, opts=child)
        request = tls.CertRequest(
            f"{name}-tls-request",
            private_key_pem=key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(common_name=common_name, organization="embedstack"),
            ip_addresses=list(ip_addresses),
            dns_names=list(self._settings.tls_dns_names),
            opts=child,
        )
        cert = tls.LocallySignedCert(
            f"{name}-tls-cert",
            cert_request_pem=request.cert_request_pem,
            ca_private_key_pem=self.key.private_key_pem,
            ca_cert_pem=self.cert.cert_pem,
            allowed_uses=SERVER_USES,
            validity_period_hours=SERVER_VALIDITY_HOURS,
            early_renewal_hours=SERVER_EARLY_RENEWAL_HOURS,
            opts=child,
        )
        return ServerCertificate(cert.cert_pem, pulumi.Output.secret(key.private_key_pem_pkcs8))
