"""The paper's pretraining setup (Tables 1 and 2): 162.1M parameters, GPT-2 BPE, sequence 1,024,
batch 2,048 sequences (grad_accum_steps=64: micro-batches of 32 sequences, sized for one GPU;
on D data-parallel devices use 64 / D to keep 32 per device), AdamW
beta (0.9, 0.95), weight decay 0.1 on rank >= 2 parameters, clip 1.0, lr 6e-4 constant after
1,000 warm-up steps, RoPE theta 10,000, no dropout, bf16 compute with float32 parameters.

The paper does not state its data or step count. Bring data as a prepared directory:
  python -m experiments.prep_data --glob='DOCS/**/*.txt' --tokenizer=gpt2 --out=DATA
  python -m experiments.train --config=configs/paper_162m.py --config.data.source=DATA \
      --workdir=workdirs/paper_ssmax
or point data.source at a flat uint16 token file (nanoGPT's train.bin / val.bin directory).
Variants: --config.model.attention=softmax|ssmax|ssmax_bias|ssmax_fixed; variant (f):
--config.switch.step=K (SSMax from step K on); variant (e): configs/needle_finetune.py style
init from a softmax run with model.attention='ssmax'.
"""
from ssmax_jax.train import default_config


def get_config():
  c = default_config()
  c.model.update(vocab_size=50257, d_model=768, num_layers=12, num_heads=12, d_ff=2048,
                 rope_theta=10000.0, attention="ssmax", dtype="bfloat16",
                 param_dtype="float32", vocab_pad_multiple=64)
  c.data.update(source="shakespeare", tokenizer="gpt2", packing=False, worker_count=4)
  c.train.update(num_steps=100_000, batch_size=2048, seq_len=1024, grad_accum_steps=64,
                 log_every=20)
  # The loss in one chunk per micro-batch of 32 x 1,024 tokens: the step skips the chunk loop's
  # slicing and its float32 accumulation of the output matrix's gradient. +1.1-1.6% on the H200
  # against chunks of 8,192 (benchmarks/bench_train.py --chunk), for 16.1 instead of
  # 11.7 GiB of temporaries (benchmarks/compile_offline.py). With less GPU memory, lower it:
  # --config.train.loss_chunk_tokens=8192. The count is global: on D data-parallel devices with
  # 32 sequences each, 32 * 1024 * D keeps one chunk.
  c.train.loss_chunk_tokens = 32 * 1024
  # The logits matmul's output stored in bf16 like the other bf16 activations (the loss's
  # reductions stay float32): measured faster on the H200, 520,690 tokens/s with the loss kernel
  # against 495,951 with float32 and XLA (benchmarks/bench_train.py). float32 by
  # --config.train.loss_logits_dtype=float32.
  c.train.loss_logits_dtype = "bfloat16"
  # cuBLAS for every GEMM (no Triton GEMM fusions): 0.6-1.4% faster on the H200 in five
  # same-call comparisons (benchmarks/gpu_ab.sh). Applied by the launcher (config.xla_flags).
  c.xla_flags = "--xla_gpu_enable_triton_gemm=false"
  c.optimizer.update(lr=6e-4, b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0,
                     schedule="constant", warmup_steps=1000)
  c.checkpoint.update(every_steps=1000, keep=3)
  return c
