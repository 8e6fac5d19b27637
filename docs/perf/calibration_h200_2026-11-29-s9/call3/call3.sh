#!/usr/bin/env bash
# Session 9, call 3: branch rope-kernel (working tree): its GPU tests and the kernel alone, then
# the paper step against main (.devcarry/ab/main), A B anchors B A.
source scripts/device_env.sh call3
echo "== GPU tests (rope kernel)"
timeout 120 python3 -m pytest -q -m gpu tests/test_kernel_rope.py 2>&1 | tail -3 | tee "$out/gpu_tests.log"
echo "== rope kernel alone"
timeout 120 python3 -m experiments.bench_rope_kernel 2>&1 | quiet | tail -9 | tee "$out/rope_kernel.log"
bash scripts/gpu_ab.sh
