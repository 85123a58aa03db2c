"""Engines: where vectors come from. One module per backend behind engines.base.Engine."""

from __future__ import annotations

from embedstack.config import ModelSpec, Settings
from embedstack.engines.base import Engine, Input, Item, Output


def build_engine(spec: ModelSpec, settings: Settings) -> Engine:
    if spec.engine == "upstream":
        from embedstack.engines.upstream import UpstreamEngine

        return UpstreamEngine(spec, settings)
    from embedstack.engines.local import LocalEngine

    return LocalEngine(spec, settings)


__all__ = ["Engine", "Input", "Item", "Output", "build_engine"]
