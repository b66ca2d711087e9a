#!/usr/bin/env bash
# One command for a GPU machine without network: install what is missing from wheels carried along,
# run the CUDA-only tests and the GPU speed benchmark, write JSON to $OUT.
#
# Before the call, on a connected machine (or here):  pip download -d wheels webdataset lpips braceexpand
# then run it with the repository (and wheels/) copied over:  OUT=/tmp/out bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia_smi.csv" 2>&1
for pkg in torch torchvision timm webdataset lpips click yaml tqdm matplotlib; do
  $PY -c "import $pkg" 2>/dev/null || missing="${missing:-} $pkg"
done
if [ -n "${missing:-}" ]; then
  echo "installing from wheels/:${missing}"
  $PY -m pip install --no-index --find-links wheels ${missing//yaml/pyyaml} >> "$OUT/pip.log" 2>&1
fi
$PY -m pip install --no-deps --no-build-isolation -e . >> "$OUT/pip.log" 2>&1
$PY -m pytest -q tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.txt"
$PY benchmarks/gpu_speed.py 2>&1 | tee "$OUT/gpu_speed.log"
tail -n 1 "$OUT/gpu_speed.log" > "$OUT/gpu_speed.json"
echo "results in $OUT"
