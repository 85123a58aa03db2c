"""A clock the test sets, for the per-tenant rates (core/tenant_rate.py, core/refusal_pacing.py)."""

from __future__ import annotations


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now
