#!/usr/bin/env bash
# embedstack shutdown-script: GCE runs it, best effort, on preemption and on stop/delete.
#
# It drains the embedding tier the way embedstack-preempt.service does, with the same settings
# (/etc/default/embedstack-preempt, written by the preemption role): stop the gateway first (SIGTERM:
# /ready turns 503 at once, accepted requests finish, the process exits 0), then vLLM, inside the
# ~30 s preemption window. It is idempotent: if the watcher already drained, `systemctl stop` on
# a stopping or stopped unit only waits for it or does nothing. On the index tier, and on hosts
# the preemption role never touched, it does nothing.
#
# Environment overrides, for tests only:
#   EMBEDSTACK_PREEMPT_ENV_FILE   settings file instead of /etc/default/embedstack-preempt
#   EMBEDSTACK_BOOTSTRAP_CONSOLE  console device instead of /dev/ttyS0 (/dev/null: none)
set -uo pipefail

readonly ENV_FILE="${EMBEDSTACK_PREEMPT_ENV_FILE:-/etc/default/embedstack-preempt}"
readonly CONSOLE="${EMBEDSTACK_BOOTSTRAP_CONSOLE:-/dev/ttyS0}"
readonly EMBEDSTACK="${EMBEDSTACK_PREEMPT_CLI:-/opt/embedstack/venv/bin/embedstack}"

if [[ "$CONSOLE" != /dev/null && ( -c "$CONSOLE" || -f "$CONSOLE" ) && -w "$CONSOLE" ]]; then  # never create one
    exec > >(tee -a "$CONSOLE" 2>/dev/null) 2>&1
else
    exec 2>&1
fi

log() { printf '%s embedstack-shutdown: %s\n' "$(date -u +%H:%M:%S)" "$*"; }

if [[ ! -f "$ENV_FILE" ]]; then
    log "no $ENV_FILE: nothing to drain on this host"
    exit 0
fi

# The same code path as the watcher: one drain, with its budget and its log of timings.
if [[ -x "$EMBEDSTACK" ]]; then
    set -a
    # shellcheck disable=SC1090 # written by the preemption role
    . "$ENV_FILE"
    set +a
    exec "$EMBEDSTACK" preempt-watch --drain-now --reason shutdown-script
fi

# No payload venv (a half-configured host): stop the units in drain order all the same.
log "no $EMBEDSTACK: stopping the units directly"
for unit in embedstack-gateway.service vllm.service; do
    started=$SECONDS
    timeout 28 systemctl stop "$unit" 2>&1
    log "systemctl stop $unit: rc $? in $((SECONDS - started)) s"
done
exit 0
