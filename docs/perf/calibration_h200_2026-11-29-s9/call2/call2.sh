#!/usr/bin/env bash
# Session 9, call 2: main (working tree, 29df0f4) and rope-bwd-loop (.devcarry/ab/rope-bwd-loop),
# each profiled over 5 steps issued back to back (kernels, the device's waits within and between
# steps, the host's events), then the anchors, then each timed again in the mirrored order.
source scripts/device_env.sh call2
site="${PYTHONPATH%%:*}"
step() {  # name, tree, bench_train flags
  local name=$1 tree=$2; shift 2
  echo "== $name $*" >> "$out/profile.log"
  (cd "$tree" && PYTHONPATH="$site:." paper_step "$@") > "$out/$name.log"
  cat "$out/$name.log" >> "$out/profile.log"
  echo -n "$name " | tee -a "$out/ab.log"; grep "^| attention" "$out/$name.log" | tail -1 | tee -a "$out/ab.log"
}
step main . --profile_steps=5 --profile_top=30
step rope .devcarry/ab/rope-bwd-loop --profile_steps=5 --profile_top=30
timeout 150 python3 .devcarry/bench/torch_gpt_anchor.py 2>&1 | tail -2 | tee -a "$out/anchors.log"
timeout 150 python3 .devcarry/bench/jax_gpt_anchor.py 2>&1 | quiet | tail -2 | tee -a "$out/anchors.log"
step rope2 .devcarry/ab/rope-bwd-loop
step main2 .
