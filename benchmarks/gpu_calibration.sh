#!/usr/bin/env bash
# One device call (about 6 minutes) for the training-throughput work, with the anchors in the
# same run (docs/dev/workspace.md, "Run on a GPU"):
#   1. the paper model's SSMax train step as configured (configs/paper_162m.py: bf16 logits, the
#      Pallas loss and norm kernels, cuBLAS-only GEMMs) and with the XLA norm;
#   2. the anchors of shared/bench (if copied to .devcarry/bench);
#   3. the GPU tests;
#   4. the step with Triton GEMMs on, without XLA command buffers, and with command buffers for
#      sequences of one kernel (each its own process: XLA reads its flags once);
#   5. the norm kernel and the loss kernel alone at several tile settings (bench_norm_kernel,
#      bench_loss_kernel, bf16).
# Throughout, nvidia-smi samples the SM clock and power every 100 ms (gpu_clocks.csv): whether
# the paper step runs at the card's power cap.
# Left out of this call, each a flag of bench_train or bench_loss_kernel away: float32 logits,
# CUDA-graph while loops, 32,768-token chunks, the loss kernel's tilings, cuDNN against our
# attention in the step, profiles (bench_train --profile_steps=3 --profile_top=40 --dump_hlo=DIR).
# Usage on the device (from the repo root, .devcarry carried): bash benchmarks/gpu_calibration.sh
# Logs go to $OUT (the device tool's folder) or ./gpu_calibration.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/device_env.sh" gpu_calibration

nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_throttle_reasons.active \
  --format=csv,noheader -lms 100 > "$out/gpu_clocks.csv" 2>/dev/null &
trap 'kill %1 2>/dev/null' EXIT

# In order of importance, so that a call cut at its 10 minutes loses the least.
step() {  # the table rows and the version line of paper_step; extra flags after
  paper_step "$@" | grep -e "|" -e "^jax" | grep -v -e "^| configuration" -e "^|---"
}
echo "== paper_162m step: as configured, and with the XLA norm"
step --norm_implementation=paper,xla | tee "$out/bench_train.log"

if [ -d .devcarry/bench ]; then
  echo "== anchors"
  timeout 150 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee "$out/anchors.log"
  timeout 150 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
fi

echo "== GPU tests"
timeout 150 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -3 | tee "$out/gpu_tests.log"

echo "== XLA flags, one process each"
step --xla_flags= | tee -a "$out/bench_train_flags.log"  # Triton GEMMs on (XLA's default)
step --xla_flags="--xla_gpu_enable_triton_gemm=false --xla_gpu_enable_command_buffer=" \
  | tee -a "$out/bench_train_flags.log"
step --xla_flags="--xla_gpu_enable_triton_gemm=false --xla_gpu_graph_min_graph_size=1" \
  | tee -a "$out/bench_train_flags.log"

echo "== residual add + RMSNorm kernel, 32,768 x 768 bf16"
timeout 60 python3 -m benchmarks.bench_norm_kernel 2>&1 | quiet | grep -e "|" -e floor \
  | tee "$out/norm_kernel.log"

echo "== loss kernel, 8,192 x 50,304 bf16"
timeout 60 python3 -m benchmarks.bench_loss_kernel --dtypes=bfloat16 2>&1 | quiet \
  | grep -e "^|" -e floor | tee "$out/loss_kernel.log"
