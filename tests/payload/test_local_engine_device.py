"""The local engine runs on CUDA when torch sees a GPU, and says so when told to and it cannot.

The GPU benchmark (tools/bench/gpu_bench.py) relies on EMBEDSTACK_DEVICE=auto choosing CUDA; no GPU is
here, so torch's two answers the engine asks for (engines/local.py _pick_device, _pick_dtype) come from a
stand-in with the same attribute names as torch.cuda.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from embedstack.config import DEFAULT_MODEL, load_settings, parse_model
from embedstack.engines.local import LocalEngine
from embedstack.errors import ConfigError

pytestmark = pytest.mark.fast


def torch_seeing(gpu: bool, bf16: bool = True) -> SimpleNamespace:
    return SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: gpu, is_bf16_supported=lambda: bf16))


def engine(**env: str) -> LocalEngine:
    return LocalEngine(parse_model(DEFAULT_MODEL, "default"), load_settings(env=env))


def picked(eng: LocalEngine, torch) -> tuple[str, str]:
    eng.device = eng._pick_device(torch)
    return eng.device, eng._pick_dtype(torch)


def test_auto_runs_on_the_gpu_in_bf16_when_torch_sees_one():
    assert picked(engine(), torch_seeing(gpu=True)) == ("cuda", "bfloat16")


def test_auto_takes_fp16_on_a_gpu_without_bf16():
    assert picked(engine(), torch_seeing(gpu=True, bf16=False)) == ("cuda", "float16")


def test_auto_without_a_gpu_stays_on_the_cpu():
    device, _ = picked(engine(), torch_seeing(gpu=False))
    assert device == "cpu"


def test_cpu_can_be_forced_beside_a_gpu_and_dtype_set_by_hand():
    eng = engine(EMBEDSTACK_DEVICE="cpu", EMBEDSTACK_DTYPE="float32")
    assert picked(eng, torch_seeing(gpu=True)) == ("cpu", "float32")


def test_cuda_asked_for_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="EMBEDSTACK_DEVICE is 'cuda' but torch sees no CUDA device"):
        engine(EMBEDSTACK_DEVICE="cuda")._pick_device(torch_seeing(gpu=False))


def test_an_unknown_device_names_the_allowed_values():
    with pytest.raises(ConfigError, match="EMBEDSTACK_DEVICE must be one of auto, cpu, cuda; got 'gpu'"):
        load_settings(env={"EMBEDSTACK_DEVICE": "gpu"})
