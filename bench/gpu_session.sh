#!/usr/bin/env bash
# The GPU rows of `make bench` plus the GPU tests, in one call of a lent GPU machine (the `device`
# tool: one short prepared script, ~10 minutes, nothing fetched there).
#
# Run there from the repository root: bash bench/gpu_session.sh [DEADLINE_S]
# Expects the Python 3.12 wheels that machine lacks in .whl/ (ROS 2 Kilted rclpy + Fast DDS,
# rosbags, spconv-triton, and the spconv CPU wheel so CPU references run beside the GPU), ~54 MB:
#   pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#     -r <requirements.txt without torch/numpy/opencv/timm/...> spconv-triton spconv==2.3.8 ...
# then delete what the image has (torch, nvidia-*, triton, numpy, ...) and lark_parser/portalocker;
# empy has no wheel: `pip wheel empy==4.2.1` first. research/gpu_sessions.md, "GPU session of 2026-11-29".
# Each step has its own time cap inside DEADLINE_S (default
# 560 s) and a failing step does not stop the others; everything the steps write (bench/results,
# docs/img, logs) is packed into $OUT/gpu_results.tar.gz, the log into $OUT/gpu_session.log (keep it
# as research/bench_logs/gpu_session_<gpu>_<date>.log; bench/results holds only the JSON).
# The machine starts with an empty Triton cache and every (kernel, channels, dtype) key is a ~2 s
# single-threaded compile, so a `warm` phase first runs one tiny pass of every measured workload
# (and the GPU tests) side by side on the machine's cores, filling the on-disk cache
# (TRITON_CACHE_DIR); the timed steps after it then load kernels instead of compiling them.
set -u
DEADLINE=${1:-560}
OUT=${OUT:-/tmp/xkd_gpu_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_session.log"
START=$(date +%s)
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export TRITON_CACHE_DIR=/tmp/xkd_triton_cache TRITON_PRINT_AUTOTUNING=1
# spconv-triton's full autotune sweep compiles ~38 tile variants per kernel key (~2 s each): on
# 2026-11-29 it did not finish the first fp32 scans in 6 minutes of an empty cache. A device call
# keeps 1 candidate (no benchmarking, one compile per key) unless told otherwise; the setting is
# recorded in each results file (machine.spconv_triton_autotune).
export XKD_SPCONV_TRITON_AUTOTUNE=${XKD_SPCONV_TRITON_AUTOTUNE:-1}
PY=${PY:-python3}

left() { echo $((DEADLINE - ($(date +%s) - START))); }

step() {  # step NAME CAP_S COMMAND...: run with min(CAP, time left - 20 s), log status and wall time
    local name=$1 cap=$2; shift 2
    local budget; budget=$(left); budget=$((budget - 20))
    [ "$budget" -lt "$cap" ] && cap=$budget
    if [ "$cap" -lt 20 ]; then echo "=== $name: SKIPPED (no time left)" | tee -a "$LOG"; return; fi
    echo "=== $name (cap ${cap}s, t=$(( $(date +%s) - START ))s): $*" | tee -a "$LOG"
    local t0; t0=$(date +%s)
    timeout -k 5 "$cap" "$@" >>"$LOG" 2>&1
    local rc=$?
    echo "=== $name: rc=$rc in $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
}

install() {
    # the image's python3 (Python 3.12, torch+CUDA, timm, OpenCV, matplotlib ...) plus the carried wheels
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl &&
        $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile -e .
}

info() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    $PY - <<'EOF'
import platform, torch, triton
print("python", platform.python_version(), "torch", torch.__version__, "triton", triton.__version__,
      "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
import spconv_triton.pytorch, spconv.pytorch, rclpy, rosbags, timm  # noqa: F401, E401
from xkd_core.models.sparse_backend import resolve_backend
print("auto on cuda ->", resolve_backend("auto", "cuda"), "| auto on cpu ->", resolve_backend("auto", "cpu"))
EOF
}

export PY
export -f install info
[ "${XKD_SKIP_INSTALL:-0}" = 1 ] || step install 120 bash -c install
step info 60 bash -c info
warm() {  # one tiny pass of each timed workload, all at once; outputs to a scratch dir, not bench/results
    local w=/tmp/xkd_warm cap=$1; mkdir -p $w
    local st="$PY -m bench.bench_stages --device cuda --backends spconv_triton --sizes 120000 --scans 2 --warmup 1 --plot none"
    timeout -k 5 "$cap" $st --precisions fp32 --out $w/s32.json >$w/s32.log 2>&1 &
    timeout -k 5 "$cap" $st --precisions fp16 --out $w/s16.json >$w/s16.log 2>&1 &
    timeout -k 5 "$cap" $st --precisions fp32 --checkpoint random-full --out $w/f32.json >$w/f32.log 2>&1 &
    timeout -k 5 "$cap" $st --precisions fp16 --checkpoint random-full --out $w/f16.json >$w/f16.log 2>&1 &
    for c in baseline xmodel_kd; do for p in synth_small semantickitti; do
        timeout -k 5 "$cap" $PY -m bench.bench_train --device cuda --configs $c --presets $p --steps 1 \
            --warmup-steps 1 --out $w/t_${c}_$p.json >$w/t_${c}_$p.log 2>&1 &
    done; done
    # the GPU tests are real checks, not timed: they run here beside the warm-ups
    timeout -k 5 "$cap" $PY -m pytest -q -p no:cacheprovider -m gpu test test/test_sparse_backend.py >$w/tests.log 2>&1 &
    wait
    for f in $w/*.log; do echo "--- $f"; tail -5 "$f"; done
    ls "$TRITON_CACHE_DIR" | wc -l
}
export -f warm

step warm 220 bash -c "warm 210"
step stages 100 $PY -m bench.bench_stages --device cuda --backends spconv_triton spconv --precisions fp32 fp16 \
    --scans 200 --warmup 5
step node 80 $PY -m bench.bench_node --device cuda --rates 10 20 --points 0 --seconds 20 --warmup 3 \
    --out bench/results/node_cuda.json
step train 100 $PY -m bench.bench_train --device cuda --steps 12 --warmup-steps 3
step stages_full 80 $PY -m bench.bench_stages --device cuda --backends spconv_triton --precisions fp32 fp16 \
    --scans 200 --warmup 5 --checkpoint random-full --plot docs/img/stage_latency_cuda_full.png \
    --out bench/results/stages_cuda_full.json

echo "=== done in $(( $(date +%s) - START ))s" | tee -a "$LOG"
tar czf "$OUT/gpu_results.tar.gz" bench/results docs/img "$LOG" 2>/dev/null
grep -E "^=== |pts: total|scans/s|passed|failed|Error" "$LOG" | tail -60
