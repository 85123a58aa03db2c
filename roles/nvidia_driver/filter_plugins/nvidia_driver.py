"""Filters of the nvidia_driver role (standard library only).

`nvidia_driver_openpgp_fingerprints` reads an OpenPGP public key (ASCII-armored, as NVIDIA publishes
`3bf863cc.pub`, or binary) and returns the fingerprints of its primary keys, so the role can check the
pinned fingerprint before apt trusts the key, on a host that has gpgv but no gpg. A version 4 key's
fingerprint is the SHA-1 of 0x99, the two-byte length of the public-key packet's body, and that body
(RFC 4880 section 12.2; packet headers in section 4.2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

PUBLIC_KEY_TAG = 6


def _dearmor(text: str) -> bytes:
    match = re.search(r"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----", text, re.S)
    if not match:
        return b""
    body = match.group(1)
    lines = body.splitlines()
    # Armor headers end at the first empty line (RFC 4880 section 6.2); the "=" line is the CRC-24.
    if "" in (line.strip() for line in lines):
        lines = lines[[line.strip() for line in lines].index("") + 1 :]
    data = "".join(line.strip() for line in lines if line.strip() and not line.startswith("="))
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _packets(data: bytes):
    i = 0
    while i < len(data):
        first = data[i]
        if not first & 0x80:
            return
        if first & 0x40:  # new format: tag in the low six bits, then a one-, two- or five-byte length
            tag, i = first & 0x3F, i + 1
            if i >= len(data):
                return
            octet = data[i]
            if octet < 192:
                length, i = octet, i + 1
            elif octet < 224:
                if i + 1 >= len(data):
                    return
                length, i = ((octet - 192) << 8) + data[i + 1] + 192, i + 2
            elif octet == 255:
                length, i = int.from_bytes(data[i + 1 : i + 5], "big"), i + 5
            else:
                return  # partial body lengths never occur in a key
        else:  # old format: tag in bits 5-2, length type in bits 1-0
            tag, kind, i = (first >> 2) & 0x0F, first & 0x03, i + 1
            if kind == 3:
                return
            size = (1, 2, 4)[kind]
            length, i = int.from_bytes(data[i : i + size], "big"), i + size
        yield tag, data[i : i + length]
        i += length


def openpgp_fingerprints(key: str | bytes) -> list[str]:
    """Upper-case hex fingerprints of the version 4 primary keys in `key` (empty if it holds none)."""
    data = key if isinstance(key, bytes) else _dearmor(key)
    if not data and isinstance(key, str) and key[:1] and ord(key[0]) & 0x80:
        data = key.encode("latin-1")
    found = []
    for tag, body in _packets(data):
        if tag == PUBLIC_KEY_TAG and body[:1] == b"\x04":
            found.append(hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper())
    return found


class FilterModule:
    def filters(self):
        return {"nvidia_driver_openpgp_fingerprints": openpgp_fingerprints}
