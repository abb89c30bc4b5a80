#!/usr/bin/env bash
# One prepared run for a machine with an NVIDIA GPU: install, make data, train briefly
# (or take a checkpoint), export ONNX FP32 / ONNX INT8 / TensorRT FP16 with parity
# checks, then `cxr bench --quick` -> report.json/.md/.png.  Budget: under 10 minutes.
#
#   bash benchmarks/gpu.sh [OUT]                      # default OUT=gpu-bench
#   CKPT=runs/x/best.pt DATA=/data/nih bash benchmarks/gpu.sh out   # reuse a model and dataset
#
# Environment: CKPT (skip training), DATA (skip synthesis), TRAIN_MINUTES (default 2),
# IMAGES (synthetic studies, default 120), SKIP_INSTALL=1 (use the current environment,
# e.g. an offline machine with the project already installed), PYTHON (default python3).
# Every step logs to OUT/gpu.log too; the first failing step stops the script, except the
# TensorRT export: without TensorRT the report then says why the backend is unavailable.
set -euo pipefail

OUT=${1:-gpu-bench}
PYTHON=${PYTHON:-python3}
TRAIN_MINUTES=${TRAIN_MINUTES:-2}
IMAGES=${IMAGES:-120}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
step() { printf '\n=== [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
START=$(date +%s)

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi: TensorRT will be reported unavailable"
nproc

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  step "install cxr-triton[all] + tensorrt"
  if [[ ! -x .venv/bin/python ]]; then "$PYTHON" -m venv .venv; fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[all]'
  # TensorRT's wheel pulls the CUDA libraries it needs; a failure is reported, not fatal.
  .venv/bin/python -m pip install --quiet tensorrt || echo "pip install tensorrt failed: the report will say tensorrt unavailable"
fi
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=$PYTHON; fi
CXR=("$PY" -m cxr.cli)
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
"$PY" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" || true

if [[ -z "${DATA:-}" ]]; then
  DATA="$OUT/data"
  if [[ ! -f "$DATA/Data_Entry_2017.csv" ]]; then
    step "synthesise $IMAGES studies"
    "${CXR[@]}" synth "$DATA" --images "$IMAGES" --seed 1
  fi
fi

if [[ -z "${CKPT:-}" ]]; then
  step "train cpu-demo for ${TRAIN_MINUTES} minutes (on the GPU when there is one)"
  "${CXR[@]}" train --data "$DATA" --preset cpu-demo --out "$OUT/run" --max-minutes "$TRAIN_MINUTES"
  CKPT="$OUT/run/best.pt"
fi

REPO="$OUT/model_repository"
step "export onnx --check"
"${CXR[@]}" export onnx --checkpoint "$CKPT" --repository "$REPO" --data "$DATA" --check --force
step "export onnx-int8 --check"
"${CXR[@]}" export onnx-int8 --checkpoint "$CKPT" --repository "$REPO" --data "$DATA" --check
step "export trt --check (TensorRT FP16)"
"${CXR[@]}" export trt --checkpoint "$CKPT" --repository "$REPO" --data "$DATA" --check \
  || echo "TensorRT export failed (see above); continuing: the report marks tensorrt unavailable"

step "cxr bench --quick"
# `python -m cxr.benchmarks.cli` is `cxr bench` without depending on how the CLI is wired.
"$PY" -m cxr.benchmarks.cli --quick --checkpoint "$CKPT" --repository "$REPO" --data "$DATA" --out "$OUT/bench"

step "done in $(( $(date +%s) - START )) s"
echo "report: $OUT/bench/report.md  $OUT/bench/report.json  $OUT/bench/report.png"
