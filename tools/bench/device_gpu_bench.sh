#!/usr/bin/env bash
# The GPU benchmark on a lent GPU machine (the `device` tool), in one command that fits its lease.
#
#   tools/bench/device_gpu_bench.sh prepare   here, with PyPI: the gateway's three packages the device
#                                             image lacks, as hash-checked wheels in build/device-wheels
#   tools/bench/device_gpu_bench.sh [run [gpu_bench.py options]]
#                                             there: the run, about 4 minutes, cut at $BUDGET seconds
#
# A rehearsal here, without a GPU: WHEEL_PYTHON=3.11 WHEELS=dir ... prepare, then DEVICE=cpu WHEELS=dir
# PYTHON=<a venv lacking those three packages> ... run.
#
# The device image (/work/.library/device/KINDS.md) has python3 3.12 with torch 2.11 + CUDA 13, transformers,
# sentence-transformers, tokenizers, numpy, httpx, pyyaml, prometheus-client, anyio, click, h11 and uvloop,
# and no network. The gateway also imports starlette, uvicorn and orjson: `prepare` downloads exactly the
# versions payload/requirements.lock pins, checked against its hashes, and the run installs them with
# --no-index into a private folder; embedstack itself runs from payload/src (PYTHONPATH), not installed.
# Everything the run writes is under $OUT (the device tool brings it back); the table is printed last.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
WHEELS=${WHEELS:-build/device-wheels}
WHEEL_PYTHON=${WHEEL_PYTHON:-3.12}  # the device's python3 is CPython 3.12 on x86-64 (KINDS.md)
# Should the import check there name another missing module, add its pin here and prepare again.
DEVICE_PACKAGES=${DEVICE_PACKAGES:-starlette uvicorn orjson}

mode=${1:-run}
[ $# -gt 0 ] && shift
if [ "$mode" = prepare ]; then
    pip=.venv/bin/pip
    [ -x "$pip" ] || pip="python3 -m pip"
    pins=$(mktemp)
    trap 'rm -f "$pins"' EXIT
    for name in $DEVICE_PACKAGES; do
        # One pin and its --hash lines: the block from "name==" to the first line without a trailing backslash.
        awk -v name="$name" 'tolower($0) ~ "^" name "==" {on=1} on {print} on && !/\\$/ {exit}' \
            payload/requirements.lock >>"$pins"
    done
    [ "$(grep -c '==' "$pins")" -eq "$(wc -w <<<"$DEVICE_PACKAGES")" ] ||
        { echo "prepare: not every one of $DEVICE_PACKAGES is pinned in payload/requirements.lock" >&2; exit 2; }
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    abi=cp${WHEEL_PYTHON/./}
    $pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --require-hashes \
        --python-version "$WHEEL_PYTHON" --implementation cp --abi "$abi" --abi abi3 --abi none \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        --platform any -r "$pins" -d "$WHEELS" || exit 2
    ls -l "$WHEELS"
    echo "carry $WHEELS in the device run: run(command='bash tools/bench/device_gpu_bench.sh'," \
        "carry=['$WHEELS'], timeout_s=560)"
    exit 0
elif [ "$mode" != run ]; then
    echo "usage: $0 [prepare | run [gpu_bench.py options]]" >&2
    exit 2
fi

OUT=${OUT:-$(mktemp -d)}
BUDGET=${BUDGET:-420}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv \
        | tee "$OUT/nvidia-smi.csv"
fi

if ! "$PYTHON" -c "import ${DEVICE_PACKAGES// /, }" 2>/dev/null; then
    ls "$WHEELS"/*.whl >/dev/null 2>&1 || {
        echo "no wheels in $WHEELS: run 'tools/bench/device_gpu_bench.sh prepare' here and carry that folder" >&2
        exit 2
    }
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/embedstack-site "$WHEELS"/*.whl || exit 2
    export PYTHONPATH=/tmp/embedstack-site
fi
export PYTHONPATH="$PWD/payload/src${PYTHONPATH:+:$PYTHONPATH}"
# What `embedstack serve` and the benchmark import, checked before any time is spent.
"$PYTHON" -c "import sys, embedstack.http_server, embedstack.engines.local, sentence_transformers, httpx, torch
assert sys.argv[1] != 'cuda' or torch.cuda.is_available(), 'torch sees no CUDA device'
print('imports ok: torch', torch.__version__, 'sees CUDA:', torch.cuda.is_available())" "$DEVICE" || exit 2

mkdir -p "$OUT/logs"
# SIGINT first: gpu_bench prints the table of what it measured so far, then stops its gateway.
timeout --signal=INT --kill-after=30 "$((BUDGET + 60))" "$PYTHON" tools/bench/gpu_bench.py --device "$DEVICE" \
    --budget "$BUDGET" --json "$OUT/gpu_bench.json" --table "$OUT/gpu_bench.md" --keep-logs "$OUT/logs" "$@" \
    2>&1 | tee "$OUT/gpu_bench.log"
exit "${PIPESTATUS[0]}"
