"""Tasks, as PVE's fork_worker runs them: a thread per task, real-shaped UPIDs, task status and log.

Upstream: pve-common (`src/PVE/RESTEnvironment.pm` fork_worker, `src/PVE/Tools.pm` upid_encode /
upid_decode and the UPID format `UPID:node:pid:pstart:starttime:type:id:user@realm!token:`) and
pve-manager 9.2 (`PVE/API2/Tasks.pm`: GET /nodes/{node}/tasks/{upid}/status and /log, the
`TASK OK` / `TASK ERROR: <message>` last line, the log layout under /var/log/pve/tasks).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

from standins.pve.schema import ApiError, param_exc

# a thread per task; its kernel thread id plays the worker's pid


def _proc_starttime(tid: int) -> int:
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks since boot


UPID_RE = re.compile(
    r"UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):"
    r"([^:\s/]+):([^:\s/]*):([^:\s/]+):"
)


class TaskFailed(Exception):
    pass


class Tasks:
    def __init__(self, node: str, log_dir: Path):
        self.node = node
        self.log_dir = log_dir
        self.tasks: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def fork_worker(self, dtype: str, vid: str, user: str, work) -> str:
        started = threading.Event()
        box: dict[str, str] = {}

        def run() -> None:
            tid = threading.get_native_id()
            task = {
                "node": self.node,
                "pid": tid,
                "pstart": _proc_starttime(tid),
                "starttime": int(time.time()),
                "type": dtype,
                "id": vid,
                "user": user,
            }
            upid = "UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{type}:{id}:{user}:".format(**task)
            # PVE's layout: /var/log/pve/tasks/<last hex digit of the start time>/<UPID>
            path = self.log_dir / f"{task['starttime']:08X}"[7] / upid
            path.parent.mkdir(parents=True, exist_ok=True)
            task.update(upid=upid, status="running", path=path)
            with self.lock:
                self.tasks[upid] = task
            box["upid"] = upid
            started.set()
            with path.open("a", buffering=1) as log:
                try:
                    work(lambda line: log.write(line.rstrip("\n") + "\n"))
                    exitstatus = "OK"
                except Exception as e:  # any die() in a PVE worker ends as "TASK ERROR: <message>"
                    exitstatus = (e.message if isinstance(e, ApiError) else str(e)).strip() or "unknown error"
                log.write("TASK OK\n" if exitstatus == "OK" else f"TASK ERROR: {exitstatus}\n")
            with self.lock:
                task.update(status="stopped", exitstatus=exitstatus)

        thread = threading.Thread(target=run, name=f"task-{dtype}-{vid}", daemon=True)
        thread.start()
        self.threads.append(thread)
        started.wait()
        return box["upid"]

    def get(self, upid: str) -> dict[str, Any]:
        if not UPID_RE.fullmatch(upid):
            raise param_exc({"upid": "unable to parse worker upid"})
        with self.lock:
            task = self.tasks.get(upid)
        if task is None:
            raise param_exc({"upid": "no such task"})
        return task

    def wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # the endpoints ---------------------------------------------------------------------------------

    def status(self, p, user, extra):
        task = self.get(p["upid"])
        out = {k: task[k] for k in ("upid", "node", "pid", "pstart", "starttime", "type", "id", "user", "status")}
        if "!" in out["user"]:
            out["user"], out["tokenid"] = out["user"].split("!", 1)
        if task["status"] == "stopped":
            out["exitstatus"] = task["exitstatus"]
        return out

    def log(self, p, user, extra):
        task = self.get(p["upid"])
        start, limit = int(p.get("start", 0)), int(p.get("limit", 50))
        lines = task["path"].read_text().splitlines() if task["path"].exists() else []
        out = [{"n": i + 1, "t": t} for i, t in enumerate(lines)][start : start + limit if limit else None]
        if not lines:
            out = [{"n": 1, "t": "no content"}]
        extra["total"] = max(len(lines), 1)
        return out
