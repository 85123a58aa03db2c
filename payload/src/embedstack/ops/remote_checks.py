"""Checks that run ON a deployed host: `embedstack health` pipes this file to `ssh host python3 -`.

Standard library only: hosts have python3 but not necessarily the embedstack venv.
`PARAMS` is prepended by the caller, so secrets never appear on a command line.
"""

import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.client import HTTPException, HTTPSConnection

PARAMS: dict = globals().get("PARAMS", {})
results: list = []


def record(check, ok, detail):
    results.append({"check": check, "ok": bool(ok), "detail": str(detail)})


class LoopbackHTTPS(HTTPSConnection):
    """Connects to 127.0.0.1 but checks the certificate for the host's own name, as its clients do."""

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def https_loopback(method, url, data, headers, timeout, tls):
    """tls: {"cert": the PEM the service serves, "name": the address clients use}. That certificate is
    the trust anchor (pinned: a leaf issued by any CA verifies), and its name must match."""
    context = ssl.create_default_context(cafile=tls["cert"])
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    parts = urllib.parse.urlsplit(url)
    conn = LoopbackHTTPS(tls["name"], parts.port, timeout=timeout, context=context)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    except ssl.SSLCertVerificationError as exc:
        return 0, f"TLS: {exc.verify_message} for {tls['name']} (the certificate in {tls['cert']})".encode()
    except (OSError, HTTPException) as exc:
        return 0, str(exc).encode()
    finally:
        conn.close()


def http(method, url, body=None, headers=None, timeout=10, tls=None):
    data = json.dumps(body).encode() if body is not None else None
    if tls:
        return https_loopback(method, url, data, headers, timeout, tls)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(getattr(exc, "reason", exc)).encode()


def run(*cmd):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def check_units():
    for unit in PARAMS.get("units", []):
        code, out = run("systemctl", "is-active", unit)
        record(f"unit {unit}", code == 0, out or "unknown")


def check_gateway():
    gw = PARAMS.get("gateway")
    if not gw:
        return
    tls = gw.get("tls")
    base = f"{'https' if tls else 'http'}://127.0.0.1:{gw['port']}"
    status, body = http("GET", base + "/ready", tls=tls)
    record("gateway /ready", status == 200, f"HTTP {status}" if status else body.decode()[:200])
    headers = {"Authorization": "Bearer " + gw["api_key"]} if gw.get("api_key") else {}
    request = {"model": gw["model"], "input": ["embedstack health canary"], "encoding_format": "float"}
    status, body = http("POST", base + "/v1/embeddings", request, headers, tls=tls)
    if status != 200:
        record("gateway embedding", False, f"HTTP {status}: {body.decode(errors='replace')[:200]}")
        return
    dims = len(json.loads(body)["data"][0]["embedding"])
    record("gateway embedding", dims == gw["dimension"], f"{dims} dims (expected {gw['dimension']})")


def check_vllm():
    if PARAMS.get("vllm"):
        status, body = http("GET", "http://127.0.0.1:8001/health")
        record("vllm /health", status == 200, f"HTTP {status}" if status else body.decode()[:200])


def check_nvidia():
    if not PARAMS.get("gpu"):
        return
    if not shutil.which("nvidia-smi"):
        record("nvidia-smi", False, "nvidia-smi is not installed")
        return
    query = ("nvidia-smi", "--query-gpu=name,driver_version,memory.used,memory.total", "--format=csv,noheader")
    user, groups = service_identity("vllm.service") if PARAMS.get("vllm") else ("", [])
    if user and user != "root":
        # as vllm.service opens the GPU: its user, its groups and the unit's SupplementaryGroups (root sees any node)
        code, out = run("runuser", "-u", user, *[arg for group in groups for arg in ("-G", group)], "--", *query)
        label = f"nvidia-smi as {user}"
    else:
        code, out = run(*query)
        label = "nvidia-smi"
    record(label, code == 0, out.splitlines()[0] if out else f"exit {code}")


def service_identity(unit):
    """The user a systemd unit runs as and every group it holds: the user's own groups plus SupplementaryGroups."""
    code, out = run("systemctl", "show", unit, "--property=User", "--property=SupplementaryGroups")
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line) if code == 0 else {}
    user = props.get("User", "")
    if not user:
        return "", []
    code, own = run("id", "-Gn", user)
    groups = (own.split() if code == 0 else []) + props.get("SupplementaryGroups", "").split()
    return user, list(dict.fromkeys(groups))


def not_running_detail(path):
    """What the qdrant role recorded on a host where it left Qdrant uninstalled (roles/qdrant/tasks/configure.yml):
    None when there is no record, else the sentence health prints: what, why and the variable that fixes it."""
    try:
        with open(path) as f:
            recorded = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"not running: {path} exists but cannot be read ({exc}); run the play again"
    where = f" ({recorded['url']}: {recorded['error']})" if recorded.get("url") else ""
    return f"not running: {recorded.get('reason', '?')}{where}. To fix it: {recorded.get('fix', '?')}"


def check_qdrant():
    qd = PARAMS.get("qdrant")
    if not qd:
        return
    detail = not_running_detail(qd.get("not_running_record", "/etc/qdrant/not-running.json"))
    if detail is not None:
        # Not ok, and not a fault either: the deployment left it out and says why (health exits 3 on these alone).
        results.append({"check": "qdrant", "ok": False, "detail": detail, "missing": True})
        return
    code, out = run("systemctl", "is-active", "qdrant.service")
    record("unit qdrant.service", code == 0, out or "unknown")
    tls = qd.get("tls")
    base = f"{'https' if tls else 'http'}://127.0.0.1:{qd['port']}"
    status, body = http("GET", base + "/readyz", tls=tls)
    record("qdrant /readyz", status == 200, f"HTTP {status}" if status else body.decode()[:200])
    if not qd.get("canary", True):
        return
    headers = {"api-key": qd.get("api_key", "")}
    name = f"embedstack-health-{uuid.uuid4().hex[:12]}"
    steps = [
        ("create", "PUT", f"/collections/{name}", {"vectors": {"size": 4, "distance": "Cosine"}}),
        (
            "write",
            "PUT",
            f"/collections/{name}/points?wait=true",
            {"points": [{"id": 1, "vector": [0.1, 0.2, 0.3, 0.4], "payload": {"canary": True}}]},
        ),
        ("read", "GET", f"/collections/{name}/points/1", None),
    ]
    failed = None
    for step, method, path, body_ in steps:
        status, out = http(method, base + path, body_, headers, tls=tls)
        if status != 200:
            failed = f"{step}: HTTP {status} {out.decode(errors='replace')[:160]}"
            break
    status, out = http("DELETE", base + f"/collections/{name}", None, headers, tls=tls)
    if not failed and status != 200:
        failed = f"delete: HTTP {status}"
    record("qdrant canary", failed is None, failed or "write/read/delete in a scratch collection")


def check_disk():
    usage = shutil.disk_usage("/")
    free_gib = usage.free / 2**30
    need = PARAMS.get("min_free_gib", 2)
    record("free disk /", free_gib >= need, f"{free_gib:.1f} GiB free (need {need})")


def check_firewall():
    code, out = run("nft", "list", "table", "inet", "embedstack")
    loaded = code == 0 and "policy drop" in out
    record("nftables ruleset", loaded, "table inet embedstack loaded, input policy drop" if loaded else out[:200])


def check_clock():
    in_container = run("systemd-detect-virt", "--container")[0] == 0
    _, out = run("timedatectl", "show", "--property=NTPSynchronized", "--value")
    skew = abs(time.time() - PARAMS.get("controller_time", time.time()))
    if in_container:  # the clock is the host kernel's: compare it with the operator's machine
        record("clock", skew < 5, f"container, host-managed clock; {skew:.2f} s from the controller")
    else:
        record(
            "clock", out == "yes" and skew < 5, f"NTPSynchronized={out or 'unknown'}; {skew:.2f} s from the controller"
        )


ONLY = PARAMS.get("only")  # names of the checks to run (roo-config asks only for "qdrant"); all by default
for fn in (check_units, check_gateway, check_vllm, check_nvidia, check_qdrant, check_disk, check_firewall, check_clock):
    if ONLY is not None and fn.__name__.removeprefix("check_") not in ONLY:
        continue
    try:
        fn()
    except Exception as exc:  # one broken check must not hide the others
        record(fn.__name__.removeprefix("check_"), False, f"{type(exc).__name__}: {exc}")
print(json.dumps(results))
