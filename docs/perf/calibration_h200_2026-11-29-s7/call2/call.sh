#!/usr/bin/env bash
# Session 2026-11-29 (7th), call 2: the q/k/v projections with their own backward
# (nn.attention.project_qkv; now) against HEAD 49b1aa1 (.devcarry/old); XLA flag variants on
# HEAD; the paper config's gradient accumulation; wider loss kernel tiles; the anchors; a profile.
source scripts/device_env.sh call2
row() { grep "^| attention" | tail -1; }
run_in() { local t=$1; shift; echo -n "$t $* " | tee -a "$out/ab.log"; (cd "$t" && PYTHONPATH="/tmp/site:." \
  timeout 90 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 "$@" 2>&1 | quiet | row) | tee -a "$out/ab.log"; }
run_in . ; run_in .devcarry/old
echo "== anchors"
timeout 100 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
timeout 100 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee -a "$out/anchors.log"
run_in .devcarry/old ; run_in .
echo "== XLA flags on HEAD"
run_in .devcarry/old "--xla_flags=--xla_gpu_enable_triton_gemm=false --xla_gpu_enable_command_buffer="
run_in .devcarry/old "--xla_flags=--xla_gpu_cudnn_gemm_fusion_level=2"
echo "== gradient accumulation, 4 micro-batches of 32 (now)"
run_in . --grad_accum=4 --steps=10
echo "== loss kernel tiles"
timeout 80 python3 -m experiments.bench_loss_kernel --dtypes=bfloat16 \
  --tiles=1:2048:4,1:4096:4,1:4096:8,1:2048:8,1:2048:2,2:2048:4 2>&1 | quiet | grep -e "^|" -e floor | tee "$out/loss_kernel.log"
echo "== profile, now"
timeout 100 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 --profile_steps=3 \
  --profile_top=40 --dump_hlo="$out/hlo" 2>&1 | quiet | grep -e "|" -e "device" > "$out/profile.log"
head -50 "$out/profile.log"
