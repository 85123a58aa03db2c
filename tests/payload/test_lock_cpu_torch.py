"""The locks that carry torch (the gateway's and vLLM's cpu build) make pip take PyTorch's CPU wheel,
never PyPI's multi-GB CUDA build.

Real pip resolves each lock's torch entry in hash-checking mode, with this machine's find-links (where
the CPU wheel lies) and PyPI (where only CUDA builds of the same version are). pip prefers a file whose
index link carries an allowed hash, so a lock listing PyPI's hashes would pick CUDA here and on every host.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


@pytest.mark.parametrize("lock", ["payload/requirements.lock", "roles/vllm/files/requirements-cpu.lock"])
def test_pip_takes_the_cpu_torch_the_lock_names(lock, tmp_path):
    entry = re.search(r"^torch==.*?(?=^\S)", (REPO / lock).read_text(), re.M | re.S)
    assert entry, f"{lock} pins no torch"
    (tmp_path / "torch.lock").write_text(entry.group(0))
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
         "--only-binary=:all:", "--require-hashes", "-r", str(tmp_path / "torch.lock"), "--report", str(report)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [chosen] = [item["download_info"]["url"] for item in json.loads(report.read_text())["install"]]
    assert "%2Bcpu-" in chosen or "+cpu-" in chosen, f"{lock}: pip would install {chosen}"
