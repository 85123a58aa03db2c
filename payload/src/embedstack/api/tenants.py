"""Who a request is: the API key it offers, or, on a gateway without keys, the client's address.
The concurrency slots and the admission line are shared out by tenant."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

from starlette.datastructures import Headers
from starlette.types import Scope


def offered_keys(headers: Mapping[str, str]) -> list[str]:
    """The keys a request offers: `Authorization: Bearer <key>` and Azure-style `api-key` (Roo Code's
    full-URL path sends both)."""
    offered = []
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        offered.append(auth[7:].strip())
    if "api-key" in headers:
        offered.append(headers["api-key"].strip())
    return offered


def matched_key(offered: Iterable[str], keys: frozenset[str]) -> str | None:
    """The configured key among those offered, compared in constant time; None when none is."""
    return next((k for o in offered for k in keys if hmac.compare_digest(o.encode(), k.encode())), None)


def tenant_of(scope: Scope, keys: frozenset[str]) -> str | None:
    """The request's tenant: its matching key, or "address:<client>" on an open gateway; None for a
    request whose key is missing or wrong (the route answers it 401)."""
    if not keys:
        client = scope.get("client")
        return f"address:{client[0] if client else ''}"
    return matched_key(offered_keys(Headers(scope=scope)), keys)
