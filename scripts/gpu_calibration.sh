#!/usr/bin/env bash
# One device call (about 8 minutes) for the training-throughput work (issue 4), with the anchors
# in the same run (docs/WORKSPACE.md, "Run on a GPU"):
#   1. the paper model's SSMax train step with float32 and bfloat16 loss logits, each with the
#      XLA loss and the Pallas loss kernel, device time by kernel (top 40), and the compiled
#      steps' HLO (hlo.tgz) to tell which ops each profiled fusion holds (the h200_small step
#      was measured by scripts/reproduce_calibration.sh);
#   2. the anchors of shared/bench (if copied to .devcarry/bench);
#   3. the loss kernel alone at several tile settings (bench_loss_kernel); the attention backend
#      in the step (cuDNN against ours); two XLA flag sets (cuBLAS-only GEMMs; while loops in
#      CUDA graphs); 32,768-token loss chunks;
#   4. the GPU tests.
# Usage on the device (from the repo root, .devcarry carried): bash scripts/gpu_calibration.sh
# Logs go to $OUT (the device tool's folder) or ./gpu_calibration.
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh" gpu_calibration

# In order of importance, so that a call cut at its 10 minutes loses the least: the profiled step,
# then the anchors (a comparison holds only within one run), then the rest.
echo "== paper_162m step, profiled"
timeout 240 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 \
  --logits_dtype=float32,bfloat16 --loss_implementation=xla,pallas --profile_steps=3 \
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
  --logits_dtype=bfloat16 --loss_implementation=pallas --attention_impl=cudnn,pallas 2>&1 \
  | quiet | grep "|" | tee -a "$out/bench_train.log"

# XLA flag sets, one process each (XLA_FLAGS is read at start): cuBLAS-only GEMMs; the loss's
# chunk loop inside CUDA graphs (conditional nodes) instead of host-driven iterations.
graphs=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,CONDITIONAL,WHILE
for flags in --xla_gpu_enable_triton_gemm=false --xla_gpu_enable_command_buffer=$graphs; do
  echo "== XLA_FLAGS=$flags"
  XLA_FLAGS=$flags timeout 120 python3 -m experiments.bench_train --attention=ssmax \
    --vocab_pad=64 --logits_dtype=bfloat16 --loss_implementation=xla,pallas 2>&1 | quiet \
    | grep "|" | tee -a "$out/bench_train_flags.log"
done

timeout 100 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 --chunk=32768 \
  --logits_dtype=bfloat16 --loss_implementation=xla,pallas 2>&1 | quiet | grep "|" \
  | tee -a "$out/bench_train.log"

echo "== GPU tests"
timeout 120 python3 -m pytest -q -m gpu tests/ -x 2>&1 | tail -3 | tee "$out/gpu_tests.log"
