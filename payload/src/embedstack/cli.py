"""The `embedstack` command."""

from __future__ import annotations

import argparse
import sys

from embedstack import __version__
from embedstack.client_setup import GATEWAY_PORT
from embedstack.config import METRICS_AUTH, load_settings
from embedstack.errors import ConfigError
from embedstack.indexing.commands import add_index_parser, add_search_parser


def _serve(args: argparse.Namespace) -> int:
    from embedstack.http_server import serve

    overrides = {
        "host": args.host,
        "port": args.port,
        "models_file": args.models,
        "api_keys_file": args.api_keys,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "metrics_auth": args.metrics_auth,
        "metrics_keys_file": args.metrics_keys,
    }
    return serve(load_settings(overrides))


def _health(args: argparse.Namespace) -> int:
    from embedstack.ops.health import run_health

    return run_health(args.inventory, args.json)


def _roo_config(args: argparse.Namespace) -> int:
    from embedstack.ops.roo_config import run_roo_config

    return run_roo_config(args.inventory, args.json)


def _preempt_watch(args: argparse.Namespace) -> int:
    from embedstack.ops.preempt import load_watch_settings, run_watch

    settings = load_watch_settings(
        metadata_url=args.metadata_url, actions=args.action, budget_seconds=args.budget, wait_seconds=args.wait
    )
    return run_watch(settings, drain_now=args.drain_now, reason=args.reason)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedstack", description=__doc__)
    parser.add_argument("--version", action="version", version=f"embedstack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible embeddings gateway",
        description="Every flag can also be set as an EMBEDSTACK_* environment variable (see the README).",
    )
    serve.add_argument("--host", help="address to bind (EMBEDSTACK_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"port (EMBEDSTACK_PORT, default {GATEWAY_PORT})")
    serve.add_argument("--models", metavar="FILE", help="model registry YAML (EMBEDSTACK_MODELS)")
    serve.add_argument("--api-keys", metavar="FILE", help="API keys, one a line (EMBEDSTACK_API_KEYS_FILE)")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate (EMBEDSTACK_TLS_CERT)")
    serve.add_argument("--tls-key", metavar="FILE", help="...and its PEM private key (EMBEDSTACK_TLS_KEY)")
    serve.add_argument(
        "--metrics-auth",
        choices=METRICS_AUTH,
        help="who may read /metrics and /ready's details (EMBEDSTACK_METRICS_AUTH, default open)",
    )
    serve.add_argument(
        "--metrics-keys", metavar="FILE", help="keys for /metrics only, one a line (EMBEDSTACK_METRICS_KEYS_FILE)"
    )
    serve.set_defaults(func=_serve)

    health = sub.add_parser(
        "health",
        help="check every host of a deployment over SSH",
        description="Exit status 0 when every check passes, 1 when any fails, 2 on a bad inventory, 3 when all that "
        "is wrong is a component the deployment left out and recorded why (a Qdrant release it could not fetch).",
    )
    health.add_argument(
        "-i", "--inventory", required=True, action="append", help="Ansible inventory; repeat to layer several"
    )
    health.add_argument("--json", action="store_true", help="print JSON instead of a table")
    health.set_defaults(func=_health)

    roo = sub.add_parser("roo-config", help="print the Roo Code settings for a deployment")
    roo.add_argument(
        "-i", "--inventory", required=True, action="append", help="Ansible inventory; repeat to layer several"
    )
    roo.add_argument("--json", action="store_true", help="print JSON")
    roo.set_defaults(func=_roo_config)

    watch = sub.add_parser(
        "preempt-watch",
        help="on a GCP spot VM, drain the gateway then vLLM when the VM is preempted",
        description="Long-polls the metadata key instance/preempted and, when it turns TRUE, runs the drain "
        "actions in order within the budget. Flags override EMBEDSTACK_PREEMPT_* variables (see the README).",
    )
    watch.add_argument("--metadata-url", help="metadata server (EMBEDSTACK_PREEMPT_METADATA_URL)")
    watch.add_argument(
        "--action",
        action="append",
        metavar="COMMAND",
        help="drain command, run without a shell; repeat in order (EMBEDSTACK_PREEMPT_ACTIONS, "
        "default: systemctl stop the gateway, then vllm.service)",
    )
    watch.add_argument("--budget", type=float, help="seconds all actions may take (EMBEDSTACK_PREEMPT_BUDGET_SECONDS)")
    watch.add_argument("--wait", type=int, help="timeout_sec of one long poll (EMBEDSTACK_PREEMPT_WAIT_SECONDS)")
    watch.add_argument("--drain-now", action="store_true", help="drain at once without watching (shutdown-script)")
    watch.add_argument("--reason", default="requested", help="reason logged with --drain-now")
    watch.set_defaults(func=_preempt_watch)

    add_index_parser(sub)
    add_search_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"embedstack: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
