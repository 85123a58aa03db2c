"""The `index` and `search` subcommands: flags, where the endpoint and Qdrant come from, output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from embedstack.client_setup import GATEWAY_PORT
from embedstack.errors import ConfigError

DEFAULT_COLLECTION = "embedstack"


def _missing_extra(exc: ImportError) -> ConfigError:
    return ConfigError(
        f"`embedstack index`/`search` need the 'index' extra ({exc.name} is missing): pip install 'embedstack[index]'"
    )


def add_common(parser: argparse.ArgumentParser) -> None:
    ep = parser.add_argument_group(
        "embeddings endpoint (default: the inventory's gateway, else what `make serve` runs)"
    )
    ep.add_argument("-i", "--inventory", action="append", help="Ansible inventory of a deployment; repeat to layer")
    ep.add_argument("--base-url", help=f"OpenAI-compatible base URL (default http://127.0.0.1:{GATEWAY_PORT}/v1)")
    ep.add_argument("--api-key", help="API key (default: $EMBEDSTACK_API_KEY, the inventory's, or none)")
    ep.add_argument("--model", help="model id (default: the first the endpoint serves)")
    qd = parser.add_argument_group("Qdrant (default: the embedded one, Qdrant Edge in --qdrant-path)")
    qd.add_argument("--qdrant-url", help="a deployed Qdrant, e.g. https://qdrant.example:6333 (or the inventory's)")
    qd.add_argument("--qdrant-api-key", help="its API key (default: $QDRANT_API_KEY or the inventory's)")
    qd.add_argument("--qdrant-ca", metavar="PEM", help="CA bundle that signed the Qdrant's TLS certificate")
    qd.add_argument(
        "--qdrant-path", type=Path, help="directory of the embedded Qdrant (default $XDG_DATA_HOME/embedstack/qdrant)"
    )
    parser.add_argument("--collection", help=f"collection name (default {DEFAULT_COLLECTION!r})")


def add_index_parser(sub) -> None:
    p = sub.add_parser(
        "index",
        help="index files for semantic search: chunks, embeddings, Qdrant (Roo Code's schema)",
        description="Walks git's files (else .gitignore's), chunks code and markdown, embeds new or changed "
        "chunks and writes them to Qdrant. A second run only embeds what changed. Exit status 2 on bad input.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--include", action="append", default=[], metavar="GLOB", help="only files matching; repeat")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="leave out files matching; repeat")
    p.add_argument("--batch", type=int, default=64, help="inputs per embeddings request (default 64)")
    p.add_argument("--parallel", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--recreate", action="store_true", help="delete a collection of another dimension and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_common(p)
    p.set_defaults(func=run_index)


def add_search_parser(sub) -> None:
    p = sub.add_parser(
        "search",
        help="search an index: ranked file:start-end, score and snippet",
        description="The query is embedded as a query (input_type query). Exit status 2 on bad input.",
    )
    p.add_argument("query")
    p.add_argument("--roo-workspace", metavar="PATH", help="search Roo Code's own index of this workspace folder")
    p.add_argument("--limit", type=int, default=10, help="hits (default 10)")
    p.add_argument("--path", metavar="PREFIX", help="only files under this directory (relative to the indexed root)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--mode",
        choices=("dense", "hybrid"),
        help="dense: the model's vectors; hybrid: those and BM25 (the sparse vectors of embedstack's own "
        "collections) fused (default: hybrid, the better on `make bench-quality`'s set; dense on Roo Code's "
        "collections, which have no sparse vectors)",
    )
    add_common(p)
    p.set_defaults(func=run_search)


def endpoint_and_target(args: argparse.Namespace, http_client=None):
    try:
        from embedstack.indexing.endpoint import DEFAULT_BASE_URL, Endpoint
        from embedstack.indexing.store import QdrantTarget
    except ImportError as exc:
        raise _missing_extra(exc) from None
    base_url, api_key, model = args.base_url, args.api_key or os.environ.get("EMBEDSTACK_API_KEY"), args.model
    qdrant_url, qdrant_key = args.qdrant_url, args.qdrant_api_key or os.environ.get("QDRANT_API_KEY")
    if args.inventory:
        from embedstack.ops.roo_config import roo_settings

        settings, _ = roo_settings(args.inventory)
        base_url = base_url or str(settings["Base URL"])
        key = str(settings["API Key"])
        api_key = api_key or ("" if key.startswith("any-non-empty") else key)
        model = model or str(settings["Model"])
        if args.qdrant_path is None:
            qdrant_url = qdrant_url or settings.get("Qdrant URL")
            qdrant_key = qdrant_key or settings.get("Qdrant API Key")
    endpoint = Endpoint(
        base_url or DEFAULT_BASE_URL,
        api_key or "",
        model,
        http_client=http_client,
        batch_size=getattr(args, "batch", 64),
        parallel=getattr(args, "parallel", 4),
    )
    target = QdrantTarget(
        url=str(qdrant_url) if qdrant_url else None,
        api_key=str(qdrant_key) if qdrant_key else None,
        ca=args.qdrant_ca,
        path=args.qdrant_path,
    )
    return endpoint, target


def run_index(args: argparse.Namespace, http_client=None) -> int:
    try:
        from embedstack.indexing.indexer import Indexer
        from embedstack.indexing.store import open_qdrant
    except ImportError as exc:
        raise _missing_extra(exc) from None

    for p in args.paths:
        if not p.exists():
            raise ConfigError(f"no such file or directory: {p}")
    endpoint, target = endpoint_and_target(args, http_client)
    model = endpoint.resolve()  # the gateway first: a wrong address or key touches nothing
    if not model.max_tokens_known:
        print(
            f"embedstack: {endpoint.base_url} does not say the model's max_tokens; assuming {model.max_tokens}",
            file=sys.stderr,
        )
    client = open_qdrant(target)
    try:
        indexer = Indexer(
            endpoint,
            client,
            args.collection or DEFAULT_COLLECTION,
            where=target.describe(),
            recreate=args.recreate,
            progress=False if args.quiet else None,
        )
        summary = indexer.run(args.paths, args.include, args.exclude)
    except KeyboardInterrupt:
        print(
            "\nembedstack: interrupted; what was written is kept, run the same command again to finish", file=sys.stderr
        )
        return 130
    finally:
        client.close()
    print(f"collection:   {args.collection or DEFAULT_COLLECTION} in {target.describe()} (model {model.id})")
    print("\n".join(summary.lines()))
    return 0


def run_search(args: argparse.Namespace, http_client=None) -> int:
    try:
        from embedstack.indexing.search import format_hits, hits_as_json, search
        from embedstack.indexing.store import open_qdrant, roo_collection_name
    except ImportError as exc:
        raise _missing_extra(exc) from None

    if args.roo_workspace and args.collection:
        raise ConfigError("give --collection or --roo-workspace, not both")
    collection = args.collection or DEFAULT_COLLECTION
    workspace = os.path.abspath(os.path.expanduser(args.roo_workspace)) if args.roo_workspace else None
    if workspace:
        collection = roo_collection_name(workspace)
    endpoint, target = endpoint_and_target(args, http_client)
    endpoint.resolve()
    client = open_qdrant(target)
    try:
        hits = search(
            endpoint,
            client,
            collection,
            args.query,
            limit=args.limit,
            prefix=args.path,
            where=target.describe(),
            mode=args.mode,
            workspace=workspace,
        )
    finally:
        client.close()
    if args.json:
        print(json.dumps(hits_as_json(hits), indent=2))
    else:
        print(format_hits(hits))
    return 0
