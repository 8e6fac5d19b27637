#!/usr/bin/env bash
# One device call (about 7 minutes) for the training-throughput work (issue 4), with the anchors
# in the same run (docs/WORKSPACE.md, "Run on a GPU"):
#   1. the paper model's SSMax train step as configured (bfloat16 logits, loss 'auto': the
#      Pallas loss kernel on a GPU) and with the XLA loss, device time by kernel (top 40, with
#      the source line of each fusion), and the compiled steps' HLO (hlo.tgz);
#   2. the anchors of shared/bench (if copied to .devcarry/bench);
#   3. the loss kernel alone at several tile settings (bench_loss_kernel); the attention backend
#      in the step (cuDNN against ours); cuBLAS-only GEMMs (XLA_FLAGS);
#   4. the GPU tests.
# Measured on 2026-11-29 and dropped since: float32 logits, CUDA-graph while loops and
# 32,768-token chunks (no gain; docs/performance.md, fourth measurement).
# Usage on the device (from the repo root, .devcarry carried): bash scripts/gpu_calibration.sh
# Logs go to $OUT (the device tool's folder) or ./gpu_calibration.
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh" gpu_calibration

# In order of importance, so that a call cut at its 10 minutes loses the least: the profiled step,
# then the anchors (a comparison holds only within one run), then the rest.
echo "== paper_162m step, profiled"
timeout 200 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 \
  --logits_dtype=bfloat16 --loss_implementation=auto,xla --profile_steps=3 \
  --profile_top=40 --dump_hlo=/tmp/hlo 2>&1 | quiet | tee "$out/bench_train.log"
tar czf "$out/hlo.tgz" -C /tmp hlo  # the profile's fusion names, resolved in the compiled HLO

if [ -d .devcarry/bench ]; then
  echo "== anchors"
  timeout 150 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee "$out/anchors.log"
  timeout 150 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
fi

# The loss kernel alone at several tile settings against XLA (one 8,192-token chunk).
timeout 90 python3 -m experiments.bench_loss_kernel 2>&1 | quiet | grep -e "|" -e floor \
  | tee "$out/loss_kernel.log"

# The attention backend in the step: cuDNN (the op's choice here) multiplies q by s·log(n) outside
# the kernel; ours applies it inside.
timeout 100 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 \
  --logits_dtype=bfloat16 --loss_implementation=auto --attention_impl=cudnn,pallas 2>&1 \
  | quiet | grep "|" | tee -a "$out/bench_train.log"

# XLA_FLAGS is read at start: one process for cuBLAS-only GEMMs.
echo "== XLA_FLAGS=--xla_gpu_enable_triton_gemm=false"
XLA_FLAGS=--xla_gpu_enable_triton_gemm=false timeout 120 python3 -m experiments.bench_train \
  --attention=ssmax --vocab_pad=64 --logits_dtype=bfloat16 --loss_implementation=auto 2>&1 \
  | quiet | grep "|" | tee -a "$out/bench_train_flags.log"

echo "== GPU tests"
timeout 120 python3 -m pytest -q -m gpu tests/ -x 2>&1 | tail -3 | tee "$out/gpu_tests.log"
