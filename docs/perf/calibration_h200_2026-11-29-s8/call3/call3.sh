#!/usr/bin/env bash
# Session 8, call 3: the paper step (main with qk-backward) against XLA command buffers that
# hold the loss's chunk loop unrolled (+WHILE, unroll_loops), and that with one 32,768-token
# loss chunk (no loop); mirrored; the anchors in between.
source scripts/device_env.sh call3
step() { local label=$1; shift; echo -n "$label " | tee -a "$out/ab.log"
  paper_step "$@" | grep "^| attention" | tail -1 | tee -a "$out/ab.log"; }
U="--xla_gpu_enable_triton_gemm=false --xla_gpu_enable_command_buffer=+WHILE --xla_gpu_command_buffer_unroll_loops=true"
step paper; step unroll --xla_flags="$U"; step unroll_chunk32k --xla_flags="$U" --chunk=32768
timeout 150 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
timeout 150 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee -a "$out/anchors.log"
step unroll_chunk32k --xla_flags="$U" --chunk=32768; step unroll --xla_flags="$U"; step paper
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee "$out/smi.log"
echo "== profile, paper flags"
STEP_TIMEOUT=100 paper_step --profile_steps=3 --profile_top=30 | grep -e "|" -e "device" > "$out/profile.log"
head -40 "$out/profile.log"
