"""Fixtures of tests/pulumi, loaded by each test module with `pytest_plugins = ["pulumi_fixtures"]`.

set_mocks runs inside these fixtures, never at import time. The two committed stacks are run
once per session and shared: the tests only read what the run recorded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from stack_mocks import STACKS, StackRun, run_program, stack_config


@pytest.fixture
def bundle_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "bundles"
    monkeypatch.setenv("EMBEDSTACK_BUNDLE_DIR", str(directory))
    return directory


@pytest.fixture
def run_stack(bundle_dir: Path):
    """run_stack(stack, overrides, secret_keys): the committed stack file + USER_CONFIG + overrides."""

    def run(stack: str, overrides: Mapping[str, Any] | None = None, secret_keys: tuple[str, ...] = ()) -> StackRun:
        result = run_program(stack, stack_config(stack, overrides), secret_keys)
        result.bundle_dir = bundle_dir
        return result

    return run


_STACK_CACHE: dict[str, StackRun] = {}


@pytest.fixture(params=STACKS)
def stack_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackRun]:
    """Each committed stack, run once per session (mocks set afresh for that run) and shared."""
    stack = request.param
    if stack not in _STACK_CACHE:
        directory = tmp_path_factory.mktemp(f"bundles-{stack}")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EMBEDSTACK_BUNDLE_DIR", str(directory))
            _STACK_CACHE[stack] = run_program(stack, stack_config(stack))
        _STACK_CACHE[stack].bundle_dir = directory
    yield _STACK_CACHE[stack]
