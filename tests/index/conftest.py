"""The index tests reuse the payload tests' fake engine and gateway process (tests/payload)."""

from __future__ import annotations

import sys
from pathlib import Path

PAYLOAD_TESTS = str(Path(__file__).resolve().parents[1] / "payload")
if PAYLOAD_TESTS not in sys.path:
    sys.path.append(PAYLOAD_TESTS)
