#!/usr/bin/env bash
# Session 2026-11-29 (5th), call 3: the model before the fused-norm restructure (00a1dbb, in
# .devcarry/old) against now, in one call, then the calibration's parts.
source scripts/device_env.sh call3
echo "== norm kernel tiles"
timeout 90 python3 -m experiments.bench_norm_kernel 2>&1 | quiet | grep -e "|" -e floor | tee "$out/norm_kernel.log"
echo "== step: old code (00a1dbb)"
(cd .devcarry/old && PYTHONPATH="/tmp/site:." timeout 120 python3 -m experiments.bench_train --attention=ssmax \
  --vocab_pad=64 2>&1 | quiet | grep "|" | tail -1) | tee "$out/bench_train.log"
echo "== step: now, norm xla and pallas"
timeout 200 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 \
  --norm_implementation=xla,pallas 2>&1 | quiet | grep "|" | tail -2 | tee -a "$out/bench_train.log"
echo "== anchors"
timeout 150 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee "$out/anchors.log"
timeout 150 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
echo "== cuBLAS-only: old, now pallas"
(cd .devcarry/old && PYTHONPATH="/tmp/site:." XLA_FLAGS=--xla_gpu_enable_triton_gemm=false timeout 120 \
  python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 2>&1 | quiet | grep "|" | tail -1) \
  | tee "$out/bench_train_flags.log"
XLA_FLAGS=--xla_gpu_enable_triton_gemm=false timeout 120 python3 -m experiments.bench_train \
  --attention=ssmax --vocab_pad=64 --norm_implementation=pallas 2>&1 | quiet | grep "|" | tail -1 \
  | tee -a "$out/bench_train_flags.log"
echo "== GPU tests (norm)"
timeout 100 python3 -m pytest -q -m gpu tests/test_kernel_rms_norm.py 2>&1 | tail -4 | tee "$out/gpu_tests.log"
