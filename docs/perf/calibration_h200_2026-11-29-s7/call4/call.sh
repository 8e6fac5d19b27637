#!/usr/bin/env bash
# Session 2026-11-29 (7th), call 4 (call 3 again, the persistent programs' block index fixed): the loss kernel with pass 2 last tile first (now) and with
# persistent programs (--tiles ...:programs); the fastest setting of the sweep then runs in the
# paper step (a copy of now with that default, /tmp/best) against now and HEAD 49b1aa1
# (.devcarry/old); the anchors; the GPU tests of the loss kernel.
source scripts/device_env.sh call4
echo "== GPU tests, loss kernel"
timeout 100 python3 -m pytest -q -m gpu tests/test_kernel_cross_entropy.py --tb=short 2>&1 > "$out/gpu_tests.log"
tail -3 "$out/gpu_tests.log"
tiles=1:2048:4,1:2048:4:264,1:2048:4:528,1:2048:4:1056,1:2048:8:264,1:2048:8:396,1:4096:8:264
tiles=$tiles,1:4096:16:132,1:2048:16:132,1:1024:4:528,2:2048:8:132,2:2048:8:264,1:4096:8:528
grep -q failed "$out/gpu_tests.log" && tiles=1:2048:4  # a broken kernel would take the sweep down
timeout 150 python3 -m experiments.bench_loss_kernel --dtypes=bfloat16 --tiles=$tiles \
  2>&1 | quiet | grep -e "^|" -e floor | tee "$out/loss_kernel.log"
best=$(grep "| kernel" "$out/loss_kernel.log" | sort -t'|' -k4 -g | head -1 | sed 's/.*kernel \([0-9:]*\) .*/\1/')
[ -n "$best" ] || best=1:2048:4:0
echo "fastest: $best" | tee -a "$out/loss_kernel.log"
IFS=: read br bv nw np <<< "$best"
mkdir -p /tmp/best && cp -r ssmax_jax experiments configs /tmp/best/
sed -i "s/^BLOCK_ROWS = .*/BLOCK_ROWS = $br/; s/^BLOCK_VOCAB = .*/BLOCK_VOCAB = $bv/; s/^NUM_WARPS = .*/NUM_WARPS = $nw/; s/^PROGRAMS = .*/PROGRAMS = $np/" /tmp/best/ssmax_jax/kernels/cross_entropy_gpu.py
grep -n "^BLOCK\|^NUM_W\|^PROGRAMS" /tmp/best/ssmax_jax/kernels/cross_entropy_gpu.py
row() { grep "^| attention" | tail -1; }
run_in() { echo -n "$1 " | tee -a "$out/ab.log"; (cd "$1" && PYTHONPATH="/tmp/site:." \
  timeout 90 python3 -m experiments.bench_train --attention=ssmax --vocab_pad=64 2>&1 | quiet | row) | tee -a "$out/ab.log"; }
run_in /tmp/best; run_in .devcarry/old; run_in .
echo "== anchors"
timeout 100 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
timeout 100 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee -a "$out/anchors.log"
run_in .; run_in .devcarry/old; run_in /tmp/best
