"""What `systemctl stop <unit>` does, for tests without systemd: SIGTERM the process whose pid is
in PIDFILE, then wait until it has exited (a zombie counts: its parent, the test, reaps it).

    python stop_process.py PIDFILE [TIMEOUT_SECONDS]

Exit status 0 once it is gone (or was not running), 1 if it outlives the timeout.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def main() -> int:
    pid = int(Path(sys.argv[1]).read_text())
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 30
    if gone(pid):
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return 0
        time.sleep(0.05)
    return 1


if __name__ == "__main__":
    sys.exit(main())
