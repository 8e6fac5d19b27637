#!/usr/bin/env bash
# Session 9, call 4: HEAD (the rope kernel merged) against main before it (29df0f4), A B anchors
# B A; then HEAD profiled over 5 steps issued back to back; then every GPU test on HEAD.
bash scripts/gpu_ab.sh
source scripts/device_env.sh call4
echo "== HEAD profiled"
paper_step --profile_steps=5 --profile_top=30 > "$out/profile.log"
grep -E "device time per step|device timeline|rope_rotate|input_convert_reduce|^\| attention" "$out/profile.log"
echo "== GPU tests"
timeout 200 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -3 | tee "$out/gpu_tests.log"
