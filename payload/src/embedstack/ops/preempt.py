"""Watch GCE's `preempted` metadata key and drain this host when it turns TRUE.

A spot VM gets an ACPI soft-off and, 30 s later, a hard off; the metadata value
`instance/preempted` turns `TRUE` at the same moment. The watcher long-polls it
(`?wait_for_change=true` with `last_etag`, so no change is missed between two polls) and, on
TRUE, runs the drain actions in order inside a time budget: by default stop the gateway first
(SIGTERM: /ready turns 503 at once, accepted requests finish, the process exits 0), then vLLM.

Standard library only, so `embedstack preempt-watch` starts in a fraction of a second and never
imports torch. Settings come from EMBEDSTACK_PREEMPT_* variables or the command line:

  EMBEDSTACK_PREEMPT_METADATA_URL   metadata server base URL (default http://metadata.google.internal)
  EMBEDSTACK_PREEMPT_ACTIONS        JSON list of commands, each a string (split like a shell
                                    would, never run by one) or a list of arguments
  EMBEDSTACK_PREEMPT_BUDGET_SECONDS seconds all actions together may take (default 28)
  EMBEDSTACK_PREEMPT_WAIT_SECONDS   timeout_sec of one long poll (default 300)
  EMBEDSTACK_PREEMPT_BACKOFF_MAX    longest pause after metadata server errors (default 10)
"""

from __future__ import annotations

import json
import logging
import os
import random
import shlex
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

from embedstack.errors import ConfigError

log = logging.getLogger("embedstack.preempt")

DEFAULT_METADATA_URL = "http://metadata.google.internal"
PREEMPTED_PATH = "/computeMetadata/v1/instance/preempted"
DEFAULT_ACTIONS: tuple[tuple[str, ...], ...] = (
    ("systemctl", "stop", "embedstack-gateway.service"),
    ("systemctl", "stop", "vllm.service"),
)
# Two polls are never closer than this, whatever the server answers: no busy loop.
MIN_POLL_INTERVAL = 1.0
# Consecutive metadata errors logged one by one; after that, one line per 60.
QUIET_AFTER_ERRORS = 5
# An action always gets at least this long, even when an earlier one used up the budget.
MIN_ACTION_SECONDS = 1.0


@dataclass(frozen=True)
class WatchSettings:
    metadata_url: str = DEFAULT_METADATA_URL
    actions: tuple[tuple[str, ...], ...] = DEFAULT_ACTIONS
    budget_seconds: float = 28.0
    wait_seconds: int = 300
    backoff_initial: float = 0.5
    backoff_max: float = 10.0


@dataclass
class StepReport:
    command: tuple[str, ...]
    returncode: int | None  # None: timed out or interrupted
    seconds: float


@dataclass
class DrainReport:
    reason: str
    steps: list[StepReport] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(s.returncode == 0 for s in self.steps)


class Terminated(Exception):
    """The watcher itself got SIGTERM/SIGINT."""


def _parse_actions(raw: str) -> tuple[tuple[str, ...], ...]:
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"EMBEDSTACK_PREEMPT_ACTIONS is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise ConfigError("EMBEDSTACK_PREEMPT_ACTIONS must be a JSON list of commands")
    return tuple(_parse_command(item) for item in items)


def _parse_command(item: object) -> tuple[str, ...]:
    if isinstance(item, str):
        words = tuple(shlex.split(item))
    elif isinstance(item, list) and all(isinstance(w, str) for w in item):
        words = tuple(item)
    else:
        raise ConfigError(f"a preemption action must be a string or a list of strings, not {item!r}")
    if not words:
        raise ConfigError("a preemption action is empty")
    return words


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, not {raw}")
    return value


def load_watch_settings(
    env: Mapping[str, str] | None = None,
    *,
    metadata_url: str | None = None,
    actions: Sequence[str] | None = None,
    budget_seconds: float | None = None,
    wait_seconds: int | None = None,
) -> WatchSettings:
    """Settings from EMBEDSTACK_PREEMPT_* variables, then the given overrides (the command line)."""
    env = os.environ if env is None else env
    url = metadata_url or env.get("EMBEDSTACK_PREEMPT_METADATA_URL") or DEFAULT_METADATA_URL
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"the metadata URL must start with http:// or https://, not {url!r}")
    if actions:
        parsed = tuple(_parse_command(a) for a in actions)
    elif env.get("EMBEDSTACK_PREEMPT_ACTIONS"):
        parsed = _parse_actions(env["EMBEDSTACK_PREEMPT_ACTIONS"])
    else:
        parsed = DEFAULT_ACTIONS
    budget = budget_seconds if budget_seconds is not None else _number(env, "EMBEDSTACK_PREEMPT_BUDGET_SECONDS", 28, 1)
    wait = wait_seconds if wait_seconds is not None else _number(env, "EMBEDSTACK_PREEMPT_WAIT_SECONDS", 300, 1)
    backoff_max = _number(env, "EMBEDSTACK_PREEMPT_BACKOFF_MAX", 10, 0.1)
    return WatchSettings(
        metadata_url=url.rstrip("/"),
        actions=parsed,
        budget_seconds=float(budget),
        wait_seconds=int(wait),
        backoff_max=backoff_max,
    )


class MetadataError(Exception):
    pass


class PreemptionWatcher:
    """Long-polls `instance/preempted`; `run()` returns once it has drained or been stopped."""

    def __init__(self, settings: WatchSettings, sleep: Callable[[float], None] | None = None):
        self.settings = settings
        self._stopped = threading.Event()
        self._sleep = sleep or self._stopped.wait
        # The metadata server is link-local: a proxy from the environment must never be used.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.polls = 0
        self.errors = 0

    # -- polling -------------------------------------------------------------------------------

    def read_preempted(self, etag: str | None = None, wait: bool = False) -> tuple[bool, str | None]:
        """One GET of instance/preempted: (is it TRUE, its ETag). Raises MetadataError."""
        query = {}
        if wait:
            query = {"wait_for_change": "true", "timeout_sec": str(self.settings.wait_seconds)}
            if etag:
                query["last_etag"] = etag
        url = self.settings.metadata_url + PREEMPTED_PATH
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
        # The server holds a wait_for_change request up to timeout_sec: allow a margin beyond it.
        timeout = self.settings.wait_seconds + 15 if wait else 10
        self.polls += 1
        try:
            with self._opener.open(request, timeout=timeout) as response:
                body = response.read(64).decode("ascii", "replace").strip()
                new_etag = response.headers.get("ETag")
                flavor = response.headers.get("Metadata-Flavor")
        except urllib.error.HTTPError as exc:
            raise MetadataError(f"HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MetadataError(f"{type(reason).__name__}: {reason}") from None
        if flavor != "Google":
            raise MetadataError("the answer has no Metadata-Flavor: Google header (not a metadata server?)")
        if body not in ("TRUE", "FALSE"):
            raise MetadataError(f"unexpected value {body[:20]!r}")
        return body == "TRUE", new_etag

    def wait_for_preemption(self) -> bool:
        """Block until `preempted` is TRUE (returns True) or stop() is called (returns False)."""
        etag: str | None = None
        backoff = self.settings.backoff_initial
        first = True
        failing = 0
        while not self._stopped.is_set():
            started = time.monotonic()
            try:
                preempted, new_etag = self.read_preempted(etag, wait=not first)
            except MetadataError as exc:
                self.errors += 1
                failing += 1
                delay = min(backoff, self.settings.backoff_max) * random.uniform(0.8, 1.2)
                # Off GCE (a lab container) this never ends: keep the journal readable.
                if failing <= QUIET_AFTER_ERRORS or failing % 60 == 0:
                    log.warning("metadata server: %s; retrying in %.1f s (%d failures in a row)", exc, delay, failing)
                self._sleep(delay)
                backoff = min(backoff * 2, self.settings.backoff_max)
                # After an error the ETag may be stale: read the value once without waiting.
                first, etag = True, None
                continue
            if failing:
                log.info("metadata server answers again after %d failures", failing)
            backoff, failing = self.settings.backoff_initial, 0
            if preempted:
                return True
            if first:
                log.info("watching %s (preempted=FALSE)", self.settings.metadata_url + PREEMPTED_PATH)
            first = False
            etag = new_etag
            elapsed = time.monotonic() - started
            if elapsed < MIN_POLL_INTERVAL:
                self._sleep(MIN_POLL_INTERVAL - elapsed)
        return False

    def stop(self) -> None:
        """Ask run()/wait_for_preemption() to return; a poll in progress finishes first."""
        self._stopped.set()

    # -- drain ---------------------------------------------------------------------------------

    def drain(self, reason: str) -> DrainReport:
        """Run the actions in order inside the budget, logging each with its time."""
        report = DrainReport(reason=reason)
        start = time.monotonic()
        deadline = start + self.settings.budget_seconds
        log.warning(
            "draining (%s): %d actions, budget %.0f s", reason, len(self.settings.actions), self.settings.budget_seconds
        )
        try:
            for n, command in enumerate(self.settings.actions, 1):
                remaining = max(deadline - time.monotonic(), MIN_ACTION_SECONDS)
                step_start = time.monotonic()
                text = shlex.join(command)
                try:
                    result = subprocess.run(command, timeout=remaining, stdin=subprocess.DEVNULL, check=False)
                    rc: int | None = result.returncode
                except subprocess.TimeoutExpired:
                    rc = None
                except OSError as exc:
                    log.error("step %d/%d: %s: %s", n, len(self.settings.actions), text, exc)
                    rc = 127
                seconds = time.monotonic() - step_start
                report.steps.append(StepReport(command, rc, seconds))
                outcome = "timed out" if rc is None else f"rc {rc}"
                level = logging.INFO if rc == 0 else logging.WARNING
                log.log(level, "step %d/%d: %s: %s in %.2f s", n, len(self.settings.actions), text, outcome, seconds)
        except Terminated:
            # systemd is stopping us (the VM is shutting down too): its own unit ordering stops
            # the gateway before vLLM, so the drain goes on without this process.
            report.interrupted = True
            log.warning("interrupted by a signal during the drain; systemd's stop ordering finishes it")
        report.seconds = time.monotonic() - start
        log.warning(
            "drain %s in %.2f s (budget %.0f s)",
            "interrupted" if report.interrupted else ("complete" if report.ok else "finished with errors"),
            report.seconds,
            self.settings.budget_seconds,
        )
        return report

    def run(self) -> DrainReport | None:
        """Wait for preemption, then drain. None when stopped before any preemption."""
        if not self.wait_for_preemption():
            return None
        log.warning("preempted=TRUE: this VM will be powered off in about 30 s")
        return self.drain("preempted")


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signal.Signals(signum).name)


def run_watch(settings: WatchSettings, drain_now: bool = False, reason: str = "requested") -> int:
    """The `embedstack preempt-watch` command: 0 after a drain or a clean stop, 1 if a step failed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    watcher = PreemptionWatcher(settings)
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            report = watcher.drain(reason) if drain_now else watcher.run()
        except Terminated as exc:
            log.info("stopped by %s before any preemption", exc)
            return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if report is None:
        return 0
    print(json.dumps({"drain_seconds": round(report.seconds, 3), "ok": report.ok, "reason": report.reason}), flush=True)
    return 0 if report.ok or report.interrupted else 1
