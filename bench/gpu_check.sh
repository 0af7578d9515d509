#!/usr/bin/env bash
# One command for the day a GPU is lent: everything the CPU could not prove, measured.
#
#   bench/gpu_check.sh [--out DIR] [--data-dir DIR] [--wheels DIR] [--stages a,b,...] [--dry-run]
#
# Stages, each logged to $OUT/<stage>.log, summed up in $OUT/summary.txt:
#   install   CuPy for the driver: cupy-cuda13x for a CUDA 13 driver, else cupy-cuda12x
#             (nvidia-smi says which); skipped when CuPy already imports. --wheels DIR installs
#             from a folder of wheels (a machine with no network).
#   kernels   tests/kernels on the cuda backend with the real CuPy (CGANRAW_KERNEL_TEST_BACKEND=cuda)
#   bench     python -m cganraw.bench --quick on the cuda backend: every kernel family against
#             NumPy and the GPU's copy bandwidth, every GEMM version against cuBLAS, the training
#             step against PyTorch where it is installed
#   census    the step census (cganraw.bench.census) at width 128, batch 128, beside the measured step
#   train     a 2-minute MNIST run of the conv cGAN (--max-minutes 2) on the GPU
#   evaluate  its evaluation (label accuracy, IS, FID, CAS) against the evaluation classifier
# --stages runs only the stages named (default: all, and census-emu, train-numpy in a dry run).
# Everything goes under $OUT (default: the $OUT the device tool gives, else gpu_check_out);
# caches too (XDG_CACHE_HOME=$OUT/cache, except in a dry run). Every stage runs even if one fails; the exit code
# is 1 when any failed. Budget: about 10 minutes on an H100.
#
# --dry-run runs the CPU side: it picks the CuPy package from nvidia-smi (or says there is
# none) without installing, prints every GPU stage's command, and runs the census on the
# emulator and a few training steps on NumPy at tiny sizes into $OUT. CI runs it
# (tests/test_gpu_check.py).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

OUT_DIR="${OUT:-gpu_check_out}"
DATA_DIR="${CGANRAW_DATA_DIR:-$REPO/../shared/data/mnist}"
[ -d "$DATA_DIR" ] || DATA_DIR="$REPO/shared/data/mnist"
WHEELS=""
STAGES=""
DRY=0
PY="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR="$2"; shift 2 ;;
        --data-dir) DATA_DIR="$2"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --stages) STAGES=",$2,"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT_DIR" || { echo "gpu_check: cannot create $OUT_DIR" >&2; exit 1; }
OUT_DIR=$(cd "$OUT_DIR" && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# a GPU run keeps its caches (the evaluation classifier, CuPy's kernels) under $OUT too
[ "$DRY" -eq 1 ] || export XDG_CACHE_HOME="$OUT_DIR/cache" CUPY_CACHE_DIR="$OUT_DIR/cache/cupy"
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
FAILED=0

note() { echo "$*" | tee -a "$SUMMARY"; }

wanted() { [ -z "$STAGES" ] || [[ "$STAGES" == *",$1,"* ]]; }

# stage NAME TIMEOUT CMD...: run, log to $OUT/NAME.log, record pass/fail and seconds
stage() {
    local name=$1 limit=$2; shift 2
    wanted "$name" || return 0
    local log="$OUT_DIR/$name.log" t0=$SECONDS rc
    echo "\$ $*" > "$log"
    timeout "$limit" "$@" >> "$log" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        note "ok    $name ($((SECONDS - t0)) s)"
    else
        note "FAIL  $name (exit $rc after $((SECONDS - t0)) s; see $log)"
        tail -n 5 "$log" | sed 's/^/      /' | tee -a "$SUMMARY"
        FAILED=1
    fi
}

# shown, not run, in a dry run
gpu_stage() {
    wanted "$1" || return 0
    if [ "$DRY" -eq 1 ]; then
        note "dry   $1: $(printf '%q ' "${@:3}")"
    else
        stage "$@"
    fi
}

# the CuPy wheel for the driver: nvidia-smi's "CUDA Version: X.Y" is the newest CUDA it runs
cupy_package() {
    local smi major
    smi=$(nvidia-smi 2>/dev/null) || return 1
    major=$(printf '%s\n' "$smi" | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n 1)
    [ -n "$major" ] || return 1
    if [ "$major" -ge 13 ]; then echo cupy-cuda13x; elif [ "$major" -ge 12 ]; then echo cupy-cuda12x; else return 2; fi
}

note "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) in $REPO, out $OUT_DIR$([ "$DRY" -eq 1 ] && echo ', dry run')"
PKG=$(cupy_package)
case $? in
    0) note "driver: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1); CuPy package $PKG" ;;
    2) note "driver too old: CuPy needs CUDA 12 or later"; FAILED=1 ;;
    *) note "no NVIDIA driver answers (nvidia-smi)"; [ "$DRY" -eq 1 ] || FAILED=1 ;;
esac

# ---------------------------------------------------------------- install
if ! wanted install; then
    :
elif [ "$DRY" -eq 1 ]; then
    note "dry   install: $PY -m pip install ${PKG:-cupy-cuda12x}${WHEELS:+ --no-index --find-links $WHEELS}"
elif "$PY" -c "import cupy; cupy.cuda.runtime.getDeviceCount()" > /dev/null 2>&1; then
    note "ok    install (CuPy $("$PY" -c 'import cupy; print(cupy.__version__)') already works)"
elif [ -n "${PKG:-}" ]; then
    stage install 600 "$PY" -m pip install "$PKG" ${WHEELS:+--no-index --find-links "$WHEELS"}
else
    note "FAIL  install (no driver to pick a CuPy for)"; FAILED=1
fi

# ---------------------------------------------------------------- GPU stages
RUN="$OUT_DIR/mnist-cgan-conv"
gpu_stage kernels 900 env CGANRAW_KERNEL_TEST_BACKEND=cuda "$PY" -m pytest -q -p no:cacheprovider tests/kernels
gpu_stage bench 900 "$PY" -m cganraw.bench --quick --out "$OUT_DIR/bench"
gpu_stage census 600 "$PY" -m cganraw.bench --census --backend cuda --model cgan-conv --width 128 --batch-size 128 \
    --measure 50 --json "$OUT_DIR/census.json"
gpu_stage train 400 "$PY" -m cganraw.train --dataset mnist --data-dir "$DATA_DIR" --no-download --backend cuda \
    --model cgan-conv --max-minutes 2 --out "$RUN" --quiet
gpu_stage evaluate 600 env CGANRAW_BACKEND=cuda "$PY" -m cganraw.evaluate --checkpoint "$RUN" --data-dir "$DATA_DIR" \
    --n-per-class 1000 --out "$OUT_DIR/evaluation"

# ---------------------------------------------------------------- the CPU side, for a dry run
if [ "$DRY" -eq 1 ]; then
    stage census-emu 600 "$PY" -m cganraw.bench --census --backend emu --model cgan-conv --width 4 --batch-size 2 \
        --json "$OUT_DIR/census-emu.json"
    stage train-numpy 600 "$PY" -m cganraw.train --dataset mnist --data-dir "$DATA_DIR" --no-download --backend numpy \
        --model cgan-conv --width 4 --batch-size 8 --max-steps 3 --log-every 1 --out "$OUT_DIR/train-numpy" --quiet
fi
[ -f "$OUT_DIR/census.log" ] && grep '^census:' "$OUT_DIR/census.log" | tee -a "$SUMMARY" > /dev/null
[ -f "$OUT_DIR/census-emu.log" ] && grep '^census:' "$OUT_DIR/census-emu.log" | tee -a "$SUMMARY" > /dev/null

if [ "$FAILED" -ne 0 ]; then
    note "gpu_check: FAILED (summary $SUMMARY)"
    exit 1
fi
note "gpu_check: all stages passed (summary $SUMMARY)"
