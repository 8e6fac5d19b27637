#!/usr/bin/env bash
# Session 8, call 2: Triton pipelining depth (num_stages) of the loss and norm kernels, alone;
# XLA command buffers with the loss's chunk loop inside (+WHILE, and unrolled) in the step,
# mirrored against the paper flags.
source scripts/device_env.sh call2
step() { local label=$1; shift; echo -n "$label " | tee -a "$out/ab.log"
  paper_step "$@" | grep "^| attention" | tail -1 | tee -a "$out/ab.log"; }
timeout 150 python3 -m experiments.bench_loss_kernel --dtypes=bfloat16 \
  --tiles=1:2048:4:1,1:2048:4:2,1:2048:4:3,1:2048:4:4,1:4096:4:3,1:4096:8:3,1:1024:4:4,1:2048:8:3,1:4096:4:4 \
  2>&1 | quiet | grep -e "|" -e floor | tee "$out/loss_kernel.log"
timeout 150 python3 -m experiments.bench_norm_kernel \
  --tiles=4:4:4:1,4:4:4:2,4:4:8:2,4:4:8:3,2:4:8:3,4:8:8:2,2:4:4:2,4:4:16:3,2:2:8:3 \
  2>&1 | quiet | grep -e "|" -e floor | tee "$out/norm_kernel.log"
W="--xla_gpu_enable_triton_gemm=false --xla_gpu_enable_command_buffer=+WHILE"
U="$W --xla_gpu_command_buffer_unroll_loops=true"
step paper; step while --xla_flags="$W"; step while_unroll --xla_flags="$U"
step while_unroll --xla_flags="$U"; step while --xla_flags="$W"; step paper
