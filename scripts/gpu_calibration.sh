#!/usr/bin/env bash
# One device call (about 8 minutes) for the training-throughput work (issue 4), with the anchors
# in the same run (docs/WORKSPACE.md, "Run on a GPU"):
#   1. the residual add + RMSNorm kernel alone at several tile settings (bench_norm_kernel);
#   2. the paper model's SSMax train step as configured and with the XLA norm, device time by
#      kernel (top 40, with the source line of each fusion), and the compiled steps' HLO (hlo.tgz);
#   3. the anchors of shared/bench (if copied to .devcarry/bench);
#   4. the same step with cuBLAS-only GEMMs (XLA_FLAGS), and the GPU tests.
# Measured in earlier calls and dropped since (docs/performance.md): float32 logits, CUDA-graph
# while loops, 32,768-token chunks, the loss kernel's tilings, cuDNN against our attention in the
# step (python -m experiments.bench_loss_kernel; bench_train --attention_impl=cudnn,pallas).
# Usage on the device (from the repo root, .devcarry carried): bash scripts/gpu_calibration.sh
# Logs go to $OUT (the device tool's folder) or ./gpu_calibration.
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh" gpu_calibration

# In order of importance, so that a call cut at its 10 minutes loses the least.
echo "== residual add + RMSNorm kernel, 32,768 x 768 bf16"
timeout 90 python3 -m experiments.bench_norm_kernel 2>&1 | quiet | grep -e "|" -e floor \
  | tee "$out/norm_kernel.log"

echo "== paper_162m step, profiled"
timeout 200 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 \
  --norm_implementation=xla,pallas --profile_steps=3 --profile_top=40 --dump_hlo=/tmp/hlo \
  2>&1 | quiet | tee "$out/bench_train.log"
tar czf "$out/hlo.tgz" -C /tmp hlo  # the profile's fusion names, resolved in the compiled HLO

if [ -d .devcarry/bench ]; then
  echo "== anchors"
  timeout 150 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee "$out/anchors.log"
  timeout 150 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
fi

# XLA_FLAGS is read at start: one process for cuBLAS-only GEMMs.
echo "== XLA_FLAGS=--xla_gpu_enable_triton_gemm=false"
XLA_FLAGS=--xla_gpu_enable_triton_gemm=false timeout 120 python3 -m experiments.bench_train \
  --attention=ssmax --vocab_pad=64 --norm_implementation=pallas 2>&1 | quiet | grep "|" \
  | tee -a "$out/bench_train_flags.log"

echo "== GPU tests"
timeout 150 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -5 | tee "$out/gpu_tests.log"
