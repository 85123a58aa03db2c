"""What the pulumi-tls provider answers, computed for real with `cryptography`.

pulumi-tls bridges hashicorp/terraform-provider-tls; its resources create real keys and
certificates from their inputs, so the mocks do too, and a test can verify the server certificate
against the exported CA with real X.509 path validation. Derived from
hashicorp/terraform-provider-tls, internal/provider/:

- resource_private_key.go: `algorithm` one of RSA, ECDSA, ED25519; `rsa_bits` default 2048,
  `ecdsa_curve` default P224 (P224, P256, P384, P521); `private_key_pem` is PKCS#1 for RSA, SEC 1
  ("EC PRIVATE KEY") for ECDSA and PKCS#8 for ED25519, `private_key_pem_pkcs8` always PKCS#8;
  `public_key_pem` (PKIX); id = hex SHA-1 of the public key.
- resource_cert_request.go: a CSR signed by `private_key_pem` carrying `subject`, `dns_names`,
  `ip_addresses`, `uris`; id = hex SHA-1 of the CSR's PEM.
- resource_self_signed_cert.go: template {subject, dns_names, ip_addresses, uris,
  BasicConstraintsValid}, signed by its own key (parent = template).
- resource_locally_signed_cert.go: template {the CSR's subject, DNS names, IP addresses, URIs,
  BasicConstraintsValid}, signed by `ca_private_key_pem` under `ca_cert_pem`.
- common_cert.go (createCertificate): NotBefore = now, NotAfter = now + validity_period_hours; a
  random 128-bit serial (the id); `allowed_uses` names mapped to key usages and extended key
  usages (unknown names ignored); `is_ca_certificate` needs a non-empty subject ("Invalid
  Certificate Subject") and sets IsCA and a subject key id (SHA-1 of the public key, also with
  `set_subject_key_id`); `ready_for_renewal` false until now is within `early_renewal_hours` of
  the end (modifyPlanIfCertificateReadyForRenewal).

Go's crypto/x509 CreateCertificate, which the provider calls, adds what the X.509 encoding needs:
basicConstraints critical, keyUsage critical, subjectAltName, and the authority key id taken from
the parent's subject key id when the certificate is not self-signed; ECDSA signs with the hash
that fits the curve (SHA-256 for P-256, SHA-384 for P-384, SHA-512 for P-521).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import secrets
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
LOCALLY_SIGNED_CERT = "tls:index/locallySignedCert:LocallySignedCert"
TYPES = (PRIVATE_KEY, CERT_REQUEST, SELF_SIGNED_CERT, LOCALLY_SIGNED_CERT)

CURVES = {"P224": ec.SECP224R1, "P256": ec.SECP256R1, "P384": ec.SECP384R1, "P521": ec.SECP521R1}
KEY_USAGES = {
    "digital_signature": "digital_signature",
    "content_commitment": "content_commitment",
    "key_encipherment": "key_encipherment",
    "data_encipherment": "data_encipherment",
    "key_agreement": "key_agreement",
    "cert_signing": "key_cert_sign",
    "crl_signing": "crl_sign",
    "encipher_only": "encipher_only",
    "decipher_only": "decipher_only",
}
EXTENDED_KEY_USAGES = {
    "any_extended": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
}
# pkix.Name's order (Go's ToRDNSequence): country … common name, serial number.
SUBJECT_FIELDS = (
    ("country", NameOID.COUNTRY_NAME),
    ("province", NameOID.STATE_OR_PROVINCE_NAME),
    ("locality", NameOID.LOCALITY_NAME),
    ("postalCode", NameOID.POSTAL_CODE),
    ("organization", NameOID.ORGANIZATION_NAME),
    ("organizationalUnit", NameOID.ORGANIZATIONAL_UNIT_NAME),
    ("commonName", NameOID.COMMON_NAME),
    ("serialNumber", NameOID.SERIAL_NUMBER),
)


class TlsError(Exception):
    """What the provider reports when it refuses a resource."""


def _pem(data: bytes) -> str:
    return data.decode()


def _load_key(pem: str) -> Any:
    return serialization.load_pem_private_key(pem.encode(), password=None)


def _hash_for(key: Any) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {384: hashes.SHA384(), 521: hashes.SHA512()}.get(key.curve.key_size, hashes.SHA256())
    return hashes.SHA256()


def _algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA"
    return "ECDSA" if isinstance(key, ec.EllipticCurvePrivateKey) else "ED25519"


def _subject(subject: dict[str, Any] | None) -> x509.Name:
    subject = subject or {}
    attrs = [x509.NameAttribute(oid, str(subject[field])) for field, oid in SUBJECT_FIELDS if subject.get(field)]
    return x509.Name(attrs)


def _sans(inputs: dict[str, Any]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in inputs.get("dnsNames") or []]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in inputs.get("ipAddresses") or []]
    names += [x509.UniformResourceIdentifier(u) for u in inputs.get("uris") or []]
    return names


def private_key(inputs: dict[str, Any]) -> dict[str, Any]:
    algorithm = inputs.get("algorithm")
    curve = inputs.get("ecdsaCurve") or "P224"
    bits = int(inputs.get("rsaBits") or 2048)
    if algorithm == "RSA":
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        traditional = serialization.PrivateFormat.TraditionalOpenSSL
    elif algorithm == "ECDSA":
        if curve not in CURVES:
            raise TlsError(f'Attribute ecdsa_curve value must be one of: ["P224" "P256" "P384" "P521"], got: "{curve}"')
        key = ec.generate_private_key(CURVES[curve]())
        traditional = serialization.PrivateFormat.TraditionalOpenSSL
    elif algorithm == "ED25519":
        key = ed25519.Ed25519PrivateKey.generate()
        traditional = serialization.PrivateFormat.PKCS8
    else:
        raise TlsError(f'Attribute algorithm value must be one of: ["RSA" "ECDSA" "ED25519"], got: "{algorithm}"')
    enc = serialization.Encoding.PEM
    none = serialization.NoEncryption()
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "algorithm": algorithm,
        "ecdsaCurve": curve,
        "rsaBits": bits,
        "privateKeyPem": _pem(key.private_bytes(enc, traditional, none)),
        "privateKeyPemPkcs8": _pem(key.private_bytes(enc, serialization.PrivateFormat.PKCS8, none)),
        "publicKeyPem": _pem(key.public_key().public_bytes(enc, serialization.PublicFormat.SubjectPublicKeyInfo)),
        "id": hashlib.sha1(public_der).hexdigest(),
    }


def cert_request(inputs: dict[str, Any]) -> dict[str, Any]:
    key = _load_key(inputs["privateKeyPem"])
    builder = x509.CertificateSigningRequestBuilder().subject_name(_subject(inputs.get("subject")))
    sans = _sans(inputs)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    pem = _pem(builder.sign(key, _hash_for(key)).public_bytes(serialization.Encoding.PEM))
    return {"certRequestPem": pem, "keyAlgorithm": _algorithm(key), "id": hashlib.sha1(pem.encode()).hexdigest()}


def _certificate(
    inputs: dict[str, Any],
    subject: x509.Name,
    sans: list[x509.GeneralName],
    public_key: Any,
    issuer: x509.Certificate | None,
    signing_key: Any,
) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    hours = int(inputs["validityPeriodHours"])
    end = now + datetime.timedelta(hours=hours)
    serial = secrets.randbits(128) or 1
    is_ca = bool(inputs.get("isCaCertificate"))
    if is_ca and len(subject) == 0:
        raise TlsError("Invalid Certificate Subject: Must contain at least one Distinguished Name when creating CA")
    uses = inputs.get("allowedUses") or []
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    flags = {flag: False for flag in KEY_USAGES.values()}
    for use in uses:
        if use in KEY_USAGES:
            flags[KEY_USAGES[use]] = True
    if any(flags.values()):
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    extended = [EXTENDED_KEY_USAGES[u] for u in uses if u in EXTENDED_KEY_USAGES]
    if extended:
        builder = builder.add_extension(x509.ExtendedKeyUsage(extended), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=len(subject) == 0)
    if is_ca or inputs.get("setSubjectKeyId"):
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if issuer is not None:
        try:
            ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
        except x509.ExtensionNotFound:
            pass
    cert = builder.sign(signing_key, _hash_for(signing_key))
    early = int(inputs.get("earlyRenewalHours") or 0)
    return {
        "certPem": _pem(cert.public_bytes(serialization.Encoding.PEM)),
        "validityStartTime": now.isoformat().replace("+00:00", "Z"),
        "validityEndTime": end.isoformat().replace("+00:00", "Z"),
        "readyForRenewal": end - datetime.timedelta(hours=early) <= now,
        "id": str(serial),
    }


def self_signed_cert(inputs: dict[str, Any]) -> dict[str, Any]:
    key = _load_key(inputs["privateKeyPem"])
    state = _certificate(inputs, _subject(inputs.get("subject")), _sans(inputs), key.public_key(), None, key)
    return {**state, "keyAlgorithm": _algorithm(key)}


def locally_signed_cert(inputs: dict[str, Any]) -> dict[str, Any]:
    csr = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
    ca_key = _load_key(inputs["caPrivateKeyPem"])
    ca_cert = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
    try:
        sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    state = _certificate(inputs, csr.subject, sans, csr.public_key(), ca_cert, ca_key)
    return {**state, "caKeyAlgorithm": _algorithm(ca_key)}


HANDLERS = {
    PRIVATE_KEY: private_key,
    CERT_REQUEST: cert_request,
    SELF_SIGNED_CERT: self_signed_cert,
    LOCALLY_SIGNED_CERT: locally_signed_cert,
}


def answer(typ: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """The provider's state for a tls resource: its inputs (secrets unwrapped) plus what it computes."""
    return {**inputs, **HANDLERS[typ](inputs)}
