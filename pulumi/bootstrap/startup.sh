#!/usr/bin/env bash
# embedstack bootstrap: the GCE startup-script of both tiers.
#
# GCE runs it as root at every boot (Debian 12 or a Deep Learning VM image). It is idempotent:
#   1. read the instance metadata: embedstack-bundle (gs://<bucket>/<object>), embedstack-tier
#      (embedding | index) and embedstack-secrets (a YAML/JSON mapping of ansible variables);
#   2. download the bundle with the VM's metadata-server token (Cloud Storage JSON API,
#      alt=media) and unpack it to /opt/embedstack/bundle/<sha256 prefix of the tarball>;
#   3. (index tier) format once and mount the persistent data disk at /mnt/disks/qdrant-data;
#   4. install ansible into the venv /opt/embedstack/ansible-venv (pinned versions);
#   5. run the configure plays of ansible/site.yml with -c local on a one-host inventory whose
#      group (embedding | qdrant) picks the plays, with inventories/gcp/group_vars, the bundle's
#      vars.yml and the secrets file as extra vars;
#   6. when they fail: reboot once if the nvidia_driver role asks for it (a new kernel, nouveau, a
#      module that does not match the running kernel), else try once more; after a second failure
#      give up for good: the VM stays up, its reason on the serial console, in the guest attribute
#      embedstack/boot-failure and in the gateway's /ready (503), which only the gateway serves
#      (autohealing probes /health, so the VM is not recreated in a loop). Later boots of that VM
#      report the failure again instead of retrying.
# Its log goes to the serial console (when /dev/ttyS0 is writable) and to journald.
# Secrets are written straight from the metadata server to a 0600 file; they never pass through
# a shell variable, a command line or the log.
#
# Environment overrides, for tests only (production leaves them unset):
#   EMBEDSTACK_METADATA_URL          metadata server base URL (default http://metadata.google.internal)
#   EMBEDSTACK_STORAGE_URL           Cloud Storage base URL (default https://storage.googleapis.com)
#   EMBEDSTACK_BOOTSTRAP_ROOT        install root instead of /opt/embedstack
#   EMBEDSTACK_BOOTSTRAP_SECRETS_DIR directory of the secrets file instead of /etc/embedstack/bootstrap
#   EMBEDSTACK_BOOTSTRAP_STOP_AFTER  fetch: stop after download and unpack; install: after the
#                                    ansible venv; empty (default): run everything
#   EMBEDSTACK_BOOTSTRAP_CONSOLE     console device instead of /dev/ttyS0 (/dev/null: none)
#   EMBEDSTACK_BOOTSTRAP_NO_DATA_DISK=1  index tier without a persistent disk (containers)
#   EMBEDSTACK_BOOTSTRAP_PIP_ARGS    extra pip arguments (e.g. --index-url of a local mirror)
#   EMBEDSTACK_BOOTSTRAP_ANSIBLE_VENV  use this existing venv with ansible; nothing is installed
#   EMBEDSTACK_BOOTSTRAP_PLAYBOOK_ARGS extra ansible-playbook arguments (e.g. --list-tasks)
#   EMBEDSTACK_BOOTSTRAP_PCI_DEVICES  PCI device directory instead of /sys/bus/pci/devices
#   EMBEDSTACK_BOOTSTRAP_GPU_WAIT_SEC most seconds to wait for the NVIDIA driver (default 900)
#   EMBEDSTACK_BOOTSTRAP_GPU_POLL_SEC seconds between nvidia-smi tries (default 5)
#   EMBEDSTACK_BOOTSTRAP_REBOOT      the reboot command (default systemctl reboot)
#   EMBEDSTACK_BOOTSTRAP_REBOOT_FLAG where the nvidia_driver role asks for a reboot (default
#                                    /run/embedstack/nvidia-driver-reboot-required, its nvidia_driver_reboot_flag)
#   EMBEDSTACK_BOOTSTRAP_RETRY_SEC   seconds before the one retry of a failure no reboot fixes (default 30)
set -euo pipefail
umask 022

readonly METADATA_URL="${EMBEDSTACK_METADATA_URL:-http://metadata.google.internal}"
readonly STORAGE_URL="${EMBEDSTACK_STORAGE_URL:-https://storage.googleapis.com}"
readonly ROOT="${EMBEDSTACK_BOOTSTRAP_ROOT:-/opt/embedstack}"
readonly SECRETS_DIR="${EMBEDSTACK_BOOTSTRAP_SECRETS_DIR:-/etc/embedstack/bootstrap}"
readonly STOP_AFTER="${EMBEDSTACK_BOOTSTRAP_STOP_AFTER:-}"
readonly CONSOLE="${EMBEDSTACK_BOOTSTRAP_CONSOLE:-/dev/ttyS0}"
# Pinned like tests/requirements.txt (tests/gcp checks they agree). ansible 12 carries
# community.general, which the common role uses; a bundle with collections/ needs only the core.
readonly ANSIBLE_CORE_VERSION="2.19.14"
readonly ANSIBLE_VERSION="12.3.0"
# Device name the Pulumi program gives the index tier's data disk, and where it is mounted.
readonly DATA_DISK="/dev/disk/by-id/google-qdrant-data"
readonly DATA_MOUNT="/mnt/disks/qdrant-data"
# The GPU tier: where NVIDIA GPUs show up, and how long the driver may take to appear when the image
# installs it (a Deep Learning VM does at first boot, started by the install-nvidia-driver metadata;
# on Debian 12 the nvidia_driver role installs it and checks nvidia-smi itself).
readonly PCI_DEVICES="${EMBEDSTACK_BOOTSTRAP_PCI_DEVICES:-/sys/bus/pci/devices}"
readonly GPU_WAIT_SEC="${EMBEDSTACK_BOOTSTRAP_GPU_WAIT_SEC:-900}"
readonly GPU_POLL_SEC="${EMBEDSTACK_BOOTSTRAP_GPU_POLL_SEC:-5}"
readonly REBOOT_COMMAND="${EMBEDSTACK_BOOTSTRAP_REBOOT:-systemctl reboot}"
readonly REBOOT_FLAG="${EMBEDSTACK_BOOTSTRAP_REBOOT_FLAG:-/run/embedstack/nvidia-driver-reboot-required}"
readonly RETRY_SEC="${EMBEDSTACK_BOOTSTRAP_RETRY_SEC:-30}"
# The guest attribute (namespace/key) that carries a boot failure out of the VM: guest attributes need no IAM
# permission from the VM, only enable-guest-attributes=TRUE in its metadata (Google, "Set and query guest attributes").
readonly FAILURE_ATTRIBUTE="embedstack/boot-failure"
# apt waits for the dpkg lock (unattended-upgrades often holds it on a first boot) instead of failing.
readonly APT_LOCK_TIMEOUT=300

readonly BUNDLE_ROOT="$ROOT/bundle"
readonly ANSIBLE_VENV="${EMBEDSTACK_BOOTSTRAP_ANSIBLE_VENV:-$ROOT/ansible-venv}"
readonly RUN_DIR="$ROOT/run"
# What survives a reboot of this VM (not its recreation): failed runs, the one reboot, the final failure. The gateway
# reads FAILURE_FILE (EMBEDSTACK_BOOT_FAILURE_FILE, from the embedstack_boot_failure_file variable).
readonly STATE_DIR="$ROOT/state"
readonly FAILURE_FILE="$STATE_DIR/boot-failure"
readonly SECRETS_FILE="$SECRETS_DIR/secrets.yml"

setup_logging() {
    # Console and journald. Under google-startup-scripts.service stdout already goes to the
    # journal (JOURNAL_STREAM is set), so logger is only added when it does not.
    local sinks=()
    if [[ "$CONSOLE" != /dev/null && ( -c "$CONSOLE" || -f "$CONSOLE" ) && -w "$CONSOLE" ]]; then  # never create one
        sinks+=("$CONSOLE")
    fi
    if [[ -z "${JOURNAL_STREAM:-}" ]] && command -v logger >/dev/null 2>&1 && [[ -S /dev/log ]]; then
        exec {journal_fd}> >(logger -t embedstack-bootstrap 2>/dev/null || cat >/dev/null)
        sinks+=("/dev/fd/$journal_fd")
    fi
    if ((${#sinks[@]})); then
        exec > >(tee -a "${sinks[@]}" 2>/dev/null) 2>&1
    else
        exec 2>&1
    fi
}

# Log lines go to stderr, which setup_logging joins to stdout: they are never captured by $(...).
log() { printf '%s embedstack-bootstrap: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# A private temporary directory (token header, metadata answers); removed on every exit path.
TMP="$(mktemp -d)"
cleanup() { rm -rf -- "$TMP"; }
trap cleanup EXIT

# metadata PATH OUTFILE: GET a metadata path into OUTFILE; 0 on 200, 4 on 404, 1 otherwise.
metadata() {
    local path="$1" out="$2" code attempt
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        code="$(curl -sS -o "$out" -w '%{http_code}' --max-time 10 --noproxy '*' \
            -H 'Metadata-Flavor: Google' "$METADATA_URL/computeMetadata/v1/$path" 2>/dev/null)" || code=000
        case "$code" in
            200) return 0 ;;
            404) return 4 ;;
        esac
        # The metadata server can lag at early boot: retry with back-off.
        log "metadata $path answered $code (try $attempt), retrying"
        sleep "$((attempt < 3 ? 1 : attempt < 6 ? attempt - 1 : 5))"
    done
    return 1
}

# apt_get ARGS...: apt-get, non-interactive, waiting up to APT_LOCK_TIMEOUT s for the dpkg lock.
apt_get() {
    DEBIAN_FRONTEND=noninteractive apt-get -o "DPkg::Lock::Timeout=$APT_LOCK_TIMEOUT" "$@"
}

# nvidia_gpu_present: 0 when the PCI bus has an NVIDIA (vendor 0x10de) display/3D controller.
nvidia_gpu_present() {
    local dev vendor class
    for dev in "$PCI_DEVICES"/*; do
        [[ -r "$dev/vendor" && -r "$dev/class" ]] || continue
        vendor="$(<"$dev/vendor")"
        class="$(<"$dev/class")"
        [[ "$vendor" == 0x10de && "$class" == 0x03* ]] && return 0
    done
    return 1
}

# image_installs_driver: 0 when the instance asks its image to install the NVIDIA driver (a Deep Learning VM).
image_installs_driver() {
    local value
    value="$(attribute install-nvidia-driver 2>/dev/null)" || value=""
    [[ "$value" == [Tt]rue ]]
}

# wait_for_gpu_driver: on the embedding tier with an NVIDIA GPU, wait (bounded) until nvidia-smi
# works, so vLLM never starts before the driver. Without a GPU (containers, tests) it returns.
wait_for_gpu_driver() {
    [[ "$TIER" == embedding ]] || return 0
    if ! nvidia_gpu_present; then
        log "no NVIDIA GPU on the PCI bus ($PCI_DEVICES): not waiting for a driver"
        return 0
    fi
    if ! image_installs_driver; then
        log "the image installs no NVIDIA driver: the nvidia_driver role installs it with the other roles"
        return 0
    fi
    local started=$SECONDS waited=0 last="nvidia-smi not found"
    while :; do
        if command -v nvidia-smi >/dev/null 2>&1; then
            if last="$(nvidia-smi -L 2>&1)"; then
                log "NVIDIA driver ready after ${waited} s: $(printf '%s' "$last" | head -n 1)"
                return 0
            fi
        fi
        waited=$((SECONDS - started))
        ((waited < GPU_WAIT_SEC)) ||
            die "no working NVIDIA driver after ${GPU_WAIT_SEC} s (nvidia-smi: $(printf '%s' "$last" | head -n 1)); vLLM cannot start"
        if ((waited % 30 < GPU_POLL_SEC)); then
            log "waiting for the NVIDIA driver (nvidia-smi) before vLLM starts: ${waited} s of at most ${GPU_WAIT_SEC} s"
        fi
        sleep "$GPU_POLL_SEC"
    done
}

# attribute KEY: print a (non-secret) instance attribute.
attribute() {
    metadata "instance/attributes/$1" "$TMP/attribute" || return
    cat -- "$TMP/attribute"
}

urlencode() {
    local s="$1" out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c="${s:i:1}"
        case "$c" in
            [A-Za-z0-9._~-]) out+="$c" ;;
            *) out+="$(printf '%%%02X' "'$c")" ;;
        esac
    done
    printf '%s' "$out"
}

read_settings() {
    local bundle_url
    bundle_url="$(attribute embedstack-bundle)" || die "cannot read the metadata attribute embedstack-bundle"
    TIER="$(attribute embedstack-tier)" || die "cannot read the metadata attribute embedstack-tier"
    case "$TIER" in
        embedding) GROUP=embedding ;;
        index) GROUP=qdrant ;;
        *) die "embedstack-tier must be embedding or index, not '$TIER'" ;;
    esac
    [[ "$bundle_url" =~ ^gs://([^/]+)/(.+)$ ]] || die "embedstack-bundle must be gs://<bucket>/<object>, not '$bundle_url'"
    BUCKET="${BASH_REMATCH[1]}"
    OBJECT="${BASH_REMATCH[2]}"
    BUNDLE_URL="$bundle_url"
    log "tier $TIER (group $GROUP), bundle $BUNDLE_URL"
}

write_secrets() {
    # Written from curl to a 0600 file in a 0700 directory: never echoed, never in argv.
    install -d -m 0700 "$SECRETS_DIR"
    local tmp="$SECRETS_DIR/.secrets.yml.new" rc=0
    (umask 077 && : >"$tmp")
    metadata instance/attributes/embedstack-secrets "$tmp" || rc=$?
    if ((rc == 4)); then
        log "no embedstack-secrets attribute: the roles run with their defaults for secrets"
        printf '{}\n' >"$tmp"
    elif ((rc != 0)); then
        rm -f -- "$tmp"
        die "could not read the embedstack-secrets attribute"
    fi
    chmod 0600 "$tmp"
    mv -f -- "$tmp" "$SECRETS_FILE"
    log "secrets written to $SECRETS_FILE (mode 0600)"
}

fetch_bundle() {
    local by_url url_key token_json token tarball sha dest
    install -d -m 0755 "$BUNDLE_ROOT" "$BUNDLE_ROOT/.by-url"
    url_key="$(printf '%s' "$BUNDLE_URL" | sha256sum | cut -c1-32)"
    by_url="$BUNDLE_ROOT/.by-url/$url_key"
    # The object name is content-addressed: a bundle already unpacked for it is reused.
    if [[ -L "$by_url" && -f "$by_url/.complete" ]]; then
        BUNDLE_DIR="$(readlink -f "$by_url")"
        log "bundle already unpacked at $BUNDLE_DIR"
        return 0
    fi
    token_json="$TMP/token.json"
    metadata instance/service-accounts/default/token "$token_json" || die "no access token from the metadata server"
    token="$(sed -n 's/.*"access_token"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$token_json")"
    [[ -n "$token" ]] || die "the metadata server's token answer has no access_token"
    # The header goes through a 0600 file so the token never shows in a process list.
    (umask 077 && printf 'Authorization: Bearer %s\n' "$token" >"$TMP/auth.header")
    unset token
    # Downloaded next to where it is unpacked: /tmp may be a small tmpfs.
    tarball="$BUNDLE_ROOT/.incoming.tar.gz"
    local url code attempt
    url="$STORAGE_URL/storage/v1/b/$(urlencode "$BUCKET")/o/$(urlencode "$OBJECT")?alt=media"
    for attempt in 1 2 3 4 5; do
        code="$(curl -sS -o "$tarball" -w '%{http_code}' --max-time 600 --retry 0 \
            -H @"$TMP/auth.header" "$url" 2>"$TMP/curl.err")" || code=000
        [[ "$code" == 200 ]] && break
        log "bundle download answered $code (try $attempt): $(cat -- "$TMP/curl.err" "$tarball" 2>/dev/null | head -c 300 | tr -d '\n')"
        case "$code" in
            401 | 403 | 404) die "cannot read $BUNDLE_URL (HTTP $code)" ;;
        esac
        sleep "$((attempt * 2))"
    done
    [[ "$code" == 200 ]] || die "could not download $BUNDLE_URL"
    sha="$(sha256sum "$tarball" | cut -c1-16)"
    dest="$BUNDLE_ROOT/$sha"
    if [[ ! -f "$dest/.complete" ]]; then
        rm -rf -- "$dest" "$dest.partial"
        mkdir -p -- "$dest.partial"
        tar -xzf "$tarball" -C "$dest.partial" --no-same-owner
        local need
        for need in ansible roles inventories/gcp; do
            [[ -e "$dest.partial/$need" ]] || die "the bundle has no $need/"
        done
        touch "$dest.partial/.complete"
        mv -- "$dest.partial" "$dest"
    fi
    rm -f -- "$tarball"
    ln -sfn -- "$dest" "$by_url"
    ln -sfn -- "$dest" "$BUNDLE_ROOT/current"
    BUNDLE_DIR="$dest"
    log "bundle unpacked at $BUNDLE_DIR"
}

mount_data_disk() {
    [[ "$TIER" == index ]] || return 0
    if mountpoint -q "$DATA_MOUNT"; then
        log "data disk already mounted at $DATA_MOUNT"
        return 0
    fi
    if [[ "${EMBEDSTACK_BOOTSTRAP_NO_DATA_DISK:-}" == 1 ]]; then
        log "no data disk (EMBEDSTACK_BOOTSTRAP_NO_DATA_DISK=1): Qdrant data stays on the boot disk"
        mkdir -p -- "$DATA_MOUNT"
        return 0
    fi
    # udev may still be creating the by-id link at early boot.
    local i
    for ((i = 0; i < 30; i++)); do
        [[ -e "$DATA_DISK" ]] && break
        sleep 1
    done
    [[ -e "$DATA_DISK" ]] || die "no data disk at $DATA_DISK (attach the disk with device name qdrant-data)"
    # Format only a disk with no filesystem at all: an existing index is never wiped.
    if ! blkid -o value -s TYPE "$DATA_DISK" >/dev/null 2>&1; then
        log "formatting the new data disk $DATA_DISK"
        mkfs.ext4 -q -m 0 -E lazy_itable_init=0,lazy_journal_init=0,discard -L qdrant-data "$DATA_DISK"
    fi
    mkdir -p -- "$DATA_MOUNT"
    local uuid
    uuid="$(blkid -o value -s UUID "$DATA_DISK")"
    if ! grep -q "UUID=$uuid" /etc/fstab; then
        printf 'UUID=%s %s ext4 discard,defaults,nofail 0 2\n' "$uuid" "$DATA_MOUNT" >>/etc/fstab
    fi
    mount "$DATA_MOUNT"
    log "data disk mounted at $DATA_MOUNT"
}

install_ansible() {
    local pkgs=() find_links=() wanted want lock
    if [[ -n "${EMBEDSTACK_BOOTSTRAP_ANSIBLE_VENV:-}" ]]; then
        log "using the ansible venv $ANSIBLE_VENV (EMBEDSTACK_BOOTSTRAP_ANSIBLE_VENV)"
        return 0
    fi
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        pkgs+=(python3-venv)
    fi
    command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
    if ((${#pkgs[@]})); then
        log "installing ${pkgs[*]}"
        apt_get update -q
        apt_get install -y -q "${pkgs[@]}"
    fi
    # ansible-core 2.19 needs Python 3.11 on the controller, which here is the VM itself.
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "python3 is $(python3 -V 2>&1); ansible-core $ANSIBLE_CORE_VERSION needs 3.11 (use a Debian 12 or Ubuntu 24.04 based image family)"
    # The closure comes hash-locked from the bundle (ansible/requirements-bootstrap*.lock, `make lock`), so
    # every VM of a bundle gets the same files; the core's lock alone when the bundle carries the collections.
    wanted=("ansible-core==$ANSIBLE_CORE_VERSION")
    lock="$BUNDLE_DIR/ansible/requirements-bootstrap-core.lock"
    if [[ ! -d "$BUNDLE_DIR/collections/ansible_collections" ]]; then
        wanted+=("ansible==$ANSIBLE_VERSION")
        lock="$BUNDLE_DIR/ansible/requirements-bootstrap.lock"
    fi
    for want in "${wanted[@]}"; do
        grep -qxF -- "$want \\" "$BUNDLE_DIR"/ansible/requirements-bootstrap*.lock 2>/dev/null ||
            die "the bundle's ansible/requirements-bootstrap*.lock does not pin $want: regenerate it with make lock"
    done
    if [[ -x "$ANSIBLE_VENV/bin/ansible-playbook" ]] &&
        "$ANSIBLE_VENV/bin/python" -m pip freeze 2>/dev/null | grep -qxF "ansible-core==$ANSIBLE_CORE_VERSION" &&
        { [[ ${#wanted[@]} == 1 ]] || "$ANSIBLE_VENV/bin/python" -m pip freeze 2>/dev/null | grep -qxF "ansible==$ANSIBLE_VERSION"; }; then
        log "ansible venv up to date at $ANSIBLE_VENV"
        return 0
    fi
    log "installing ${wanted[*]} into $ANSIBLE_VENV"
    python3 -m venv "$ANSIBLE_VENV"
    [[ -d "$BUNDLE_DIR/wheels" ]] && find_links=(--find-links "$BUNDLE_DIR/wheels")
    # shellcheck disable=SC2086 # EMBEDSTACK_BOOTSTRAP_PIP_ARGS is a list of words
    "$ANSIBLE_VENV/bin/python" -m pip install -q --disable-pip-version-check --require-hashes \
        "${find_links[@]}" ${EMBEDSTACK_BOOTSTRAP_PIP_ARGS:-} -r "$lock"
}

write_inventory() {
    # A one-host inventory: its group picks the plays of site.yml, the bundle's group_vars sit
    # next to it (ansible reads group_vars relative to the inventory file).
    local inv="$RUN_DIR/inventory" host
    host="$(hostname -s 2>/dev/null || hostname)"
    rm -rf -- "$inv"
    install -d -m 0755 "$RUN_DIR" "$inv"
    cp -a -- "$BUNDLE_DIR/inventories/gcp/group_vars" "$inv/group_vars"
    cat >"$inv/hosts.yml" <<EOF
# Written by the embedstack bootstrap at every boot; do not edit.
all:
  children:
    gcp:
      children:
        $GROUP:
          hosts:
            $host:
              ansible_connection: local
              ansible_python_interpreter: /usr/bin/python3
EOF
    INVENTORY="$inv/hosts.yml"
    HOST="$host"
}

run_playbook() {
    local extra=("$@")
    [[ -f "$BUNDLE_DIR/vars.yml" ]] && extra+=(-e "@$BUNDLE_DIR/vars.yml")
    extra+=(-e "@$SECRETS_FILE" -e "embedstack_boot_failure_file=$FAILURE_FILE")
    export ANSIBLE_CONFIG="$BUNDLE_DIR/ansible.cfg"
    export ANSIBLE_ROLES_PATH="$BUNDLE_DIR/roles"
    export ANSIBLE_HOST_KEY_CHECKING=false
    export ANSIBLE_NOCOLOR=1
    export ANSIBLE_LOCAL_TEMP="$RUN_DIR/tmp"
    export HOME="${HOME:-/root}"
    [[ -d "$BUNDLE_DIR/collections" ]] && export ANSIBLE_COLLECTIONS_PATH="$BUNDLE_DIR/collections"
    log "running the $GROUP plays of site.yml on $HOST"
    local started=$SECONDS
    # shellcheck disable=SC2086 # EMBEDSTACK_BOOTSTRAP_PLAYBOOK_ARGS is a list of words
    # The play's output also goes to a file, where a failure's message is found for the report.
    (cd "$BUNDLE_DIR" && "$ANSIBLE_VENV/bin/ansible-playbook" -c local -i "$INVENTORY" \
        --limit "$HOST" --skip-tags provision "${extra[@]}" -e "embedstack_tier=$TIER" \
        ${EMBEDSTACK_BOOTSTRAP_PLAYBOOK_ARGS:-} ansible/site.yml) 2>&1 | tee "$RUN_DIR/site.log"
    local rc="${PIPESTATUS[0]}"
    ((rc == 0)) || return "$rc"
    log "configured in $((SECONDS - started)) s"
}

# play_failure: the message of the last failed task in the last run (one line, at most 500 characters).
play_failure() {
    local line
    line="$(grep -E '^(fatal|failed): ' "$RUN_DIR/site.log" 2>/dev/null | tail -n 1)" || line=""
    if [[ "$line" =~ \"msg\":\ \"(([^\"\\]|\\.)*)\" ]]; then
        line="${BASH_REMATCH[1]}"
    fi
    [[ -n "$line" ]] || line="$(grep -v '^[[:space:]]*$' "$RUN_DIR/site.log" 2>/dev/null | tail -n 1)" || line=""
    printf '%s' "${line:-ansible-playbook failed}" | tr -s '\n\t' '  ' | cut -c1-500
}

# set_guest_attribute VALUE: publish VALUE as the guest attribute FAILURE_ATTRIBUTE (best effort: a VM without
# enable-guest-attributes gets 403 "Guest attributes endpoint access is disabled.").
set_guest_attribute() {
    local code
    code="$(printf '%s' "$1" | curl -sS -o "$TMP/guest-attribute" -w '%{http_code}' --max-time 10 --noproxy '*' \
        -X PUT --data-binary @- -H 'Metadata-Flavor: Google' \
        "$METADATA_URL/computeMetadata/v1/instance/guest-attributes/$FAILURE_ATTRIBUTE" 2>/dev/null)" || code=000
    if [[ "$code" == 200 ]]; then
        log "guest attribute $FAILURE_ATTRIBUTE set" \
            "(gcloud compute instances get-guest-attributes <vm> --query-path=$FAILURE_ATTRIBUTE)"
    else
        log "could not set the guest attribute $FAILURE_ATTRIBUTE" \
            "(HTTP $code: $(head -c 200 "$TMP/guest-attribute" 2>/dev/null | tr -d '\n'))"
    fi
}

# report_failure: say on the serial console and in the guest attribute why this VM cannot serve.
report_failure() {
    local reason
    reason="$(cat -- "$FAILURE_FILE")"
    log "BOOT FAILED for good, no more reboots or retries: $reason"
    log "the VM stays up, out of the load balancer: /ready answers 503 with this reason;" \
        "autohealing (on /health) keeps it."
    log "Fix the cause (pulumi up rolls new VMs), or retry here:" \
        "rm $FAILURE_FILE $STATE_DIR/failed-runs $STATE_DIR/rebooted && reboot"
    set_guest_attribute "$reason"
}

# give_up REASON: on a GPU VM, record the final failure, report it, and start the gateway alone so /ready says it;
# exits 1. The index VM (no group recreates it, its data stays) keeps retrying at each boot instead.
give_up() {
    if [[ "$TIER" != embedding ]]; then
        rm -f -- "$STATE_DIR/failed-runs"
        die "the $GROUP plays of site.yml failed twice (the next boot tries again): $1"
    fi
    printf '%s\n' "$1" >"$FAILURE_FILE.new"
    chmod 0644 "$FAILURE_FILE.new"
    mv -f -- "$FAILURE_FILE.new" "$FAILURE_FILE"
    report_failure
    log "starting the gateway without the GPU chain, to answer /ready with the reason"
    run_playbook -e embedstack_boot_failed=true -e embedding_service_wait_for_ready=false ||
        log "the gateway could not be started either ($(play_failure)):" \
            "nothing answers /health, so autohealing will recreate this VM"
    die "the $GROUP plays of site.yml failed for good: $1"
}

# configure: run the plays; on a failure reboot once when the nvidia_driver role asks for it (the script runs again
# at boot), else try once more; a second failure, on this boot or after the reboot, gives up for good.
configure() {
    local failures reason
    while :; do
        rm -f -- "$REBOOT_FLAG"
        if run_playbook; then
            rm -f -- "$STATE_DIR/failed-runs"
            return 0
        fi
        failures=$(($(cat -- "$STATE_DIR/failed-runs" 2>/dev/null || echo 0) + 1))
        printf '%s\n' "$failures" >"$STATE_DIR/failed-runs"
        if [[ -s "$REBOOT_FLAG" ]]; then
            reason="$(cat -- "$REBOOT_FLAG")"
            if [[ ! -e "$STATE_DIR/rebooted" ]]; then
                printf '%s\n' "$reason" >"$STATE_DIR/rebooted"
                log "the nvidia_driver role needs a reboot: $reason. Rebooting once; this script runs again at boot"
                # shellcheck disable=SC2086 # EMBEDSTACK_BOOTSTRAP_REBOOT is a command line
                $REBOOT_COMMAND
                exit 0
            fi
            give_up "still after the one reboot ($(cat -- "$STATE_DIR/rebooted")): $reason"
        fi
        reason="$(play_failure)"
        if ((failures >= 2)); then
            give_up "the $GROUP plays failed twice; last: $reason"
        fi
        log "the $GROUP plays failed ($reason); trying once more in $RETRY_SEC s"
        sleep "$RETRY_SEC"
    done
}

main() {
    [[ "$(id -u)" == 0 || -n "${EMBEDSTACK_BOOTSTRAP_ROOT:-}" ]] || die "run as root"
    command -v curl >/dev/null 2>&1 || {
        apt_get update -q
        apt_get install -y -q curl ca-certificates
    }
    local started=$SECONDS
    log "starting (metadata $METADATA_URL, storage $STORAGE_URL, root $ROOT)"
    read_settings
    write_secrets
    fetch_bundle
    if [[ "$STOP_AFTER" == fetch ]]; then
        log "stopping after fetch (EMBEDSTACK_BOOTSTRAP_STOP_AFTER=fetch); bundle at $BUNDLE_DIR"
        return 0
    fi
    mount_data_disk
    install_ansible
    if [[ "$STOP_AFTER" == install ]]; then
        log "stopping after install (EMBEDSTACK_BOOTSTRAP_STOP_AFTER=install)"
        return 0
    fi
    install -d -m 0755 "$STATE_DIR"
    if [[ -s "$FAILURE_FILE" ]]; then
        # A VM that gave up stays failed across its reboots: a new VM (pulumi up, or a recreate) retries.
        report_failure
        die "this VM's boot failed for good earlier; not configuring it again"
    fi
    wait_for_gpu_driver
    write_inventory
    configure
    log "done in $((SECONDS - started)) s"
}

setup_logging
main "$@"
