#!/usr/bin/env bash
# Session 2026-11-29 (6th), call 1: profile + idle gaps of the committed paper step, anchors,
# 16,384-token loss chunks, cuBLASLt, the norm kernel's tile sweep.
source scripts/device_env.sh call1
step() {
  timeout 200 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 "$@" 2>&1 \
    | quiet | grep -e "|" -e "^jax" -e "device busy" -e "device time" | grep -v -e "^| configuration" -e "^|---"
}
echo "== profile of the step as configured"
step --profile_steps=3 --profile_top=45 --dump_hlo="$out/hlo" | tee "$out/profile.log"
echo "== anchors"
timeout 120 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee "$out/anchors.log"
timeout 120 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
echo "== loss chunks 8192 / 16384"
step --chunk=8192,16384 | tee "$out/chunks.log"
echo "== cuBLASLt"
step --xla_flags="--xla_gpu_enable_triton_gemm=false --xla_gpu_enable_cublaslt=true" | tee "$out/cublaslt.log"
echo "== norm kernel"
timeout 90 python3 -m experiments.bench_norm_kernel 2>&1 | quiet | grep -e "|" -e floor | tee "$out/norm_kernel.log"
