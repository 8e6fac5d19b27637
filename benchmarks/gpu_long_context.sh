#!/usr/bin/env bash
# On the device: the paper SSMax step packed (documents drawn as the docmask anchor draws them)
# at T=1024 B=32 and T=8192 B=4, unpacked at T=1024, and at T=32768 / 65536 (B=1) with peak
# memory, each beside the torch docmask anchor at the same shape (.devcarry/bench carried).
# Usage, from the repo root: bash benchmarks/gpu_long_context.sh [bench_train flags]
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/device_env.sh" gpu_long_context
row() {  # label, then bench_train flags
  local label=$1; shift
  echo "$label $(paper_step --steps=10 "$@" | grep -e "^| attention" -e "peak_mem" | tr '\n' ' ')" \
    | tee -a "$out/long_context.log"
}
anchor() {  # label, then the anchor's arguments
  local label=$1; shift
  echo "$label $(timeout 180 python3 .devcarry/bench/torch_docmask_anchor.py "$@" 2>&1 | tail -2 \
    | tr '\n' ' ')" | tee -a "$out/long_context.log"
}
row "ours T=1024 B=32 unpacked" --batch=32 --seq=1024 "$@"
row "ours T=1024 B=32 packed 512" --batch=32 --seq=1024 --mean_doc=512 "$@"
anchor "torch T=1024 B=32 docmask 512" 32 --seq=1024 --mean_doc=512
row "ours T=8192 B=4 packed 2048" --batch=4 --seq=8192 --mean_doc=2048 "$@"
anchor "torch T=8192 B=4 docmask 2048" 4 --seq=8192 --mean_doc=2048
row "ours T=32768 B=1 unpacked" --batch=1 --seq=32768 "$@"
STEP_TIMEOUT=200 row "ours T=65536 B=1 unpacked" --batch=1 --seq=65536 "$@"
anchor "torch T=32768 B=1" 1 --seq=32768 --mean_doc=2048
