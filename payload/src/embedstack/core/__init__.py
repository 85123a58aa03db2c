"""The serving core, below the HTTP layer: served models, their batchers with admission and the cache, metrics."""
