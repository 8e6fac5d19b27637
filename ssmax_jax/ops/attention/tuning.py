"""The attention kernels' tuned settings: one table, backend -> rows by head dim.

Each backend's `default_settings` builds its `Settings` from the first row whose head-dim
bound takes the call (None: any head dim). A row's comment names the command that reproduces
its choice; the measurements themselves live with that benchmark, not here.
"""

TABLE = {
    # (block_q, block_k, num_warps, num_stages) of the forward, dq/dc and dk/dv kernels. Picked
    # among candidates on an H200 (bf16, causal), used on every GPU: benchmarks/bench_attention.py
    # --rows=triton --triton_variants='name:fwd=bq,bk,warps,stages/dq=.../dkdv=...'.
    "triton": (
        (64, dict(fwd=(128, 128, 8, 3), dkdv=(64, 64, 4, 3), dq=(64, 64, 4, 3))),
        (None, dict(fwd=(128, 64, 8, 3), dkdv=(64, 128, 8, 3), dq=(128, 64, 8, 3))),
    ),
    # Keys per step and shared-memory slots of the Hopper forward, dq/dc and dk/dv kernels. The
    # forward's on an H200: benchmarks/bench_attention.py --rows=mosaic
    # --mosaic_variants='64,2;64,3;128,3' (128 x 3 exceeds shared memory at head dim 128); the
    # backward's: benchmarks/bench_mosaic_bwd.py --variants='...' (six fields each).
    "mosaic_gpu": (
        (None, dict(block_kv=128, stages=2, dq_block_kv=64, dq_stages=2, dkv_block_q=64,
                    dkv_stages=2)),
    ),
    # Candidate block lengths of the TPU kernels, largest first: the largest that pads T (or S)
    # at most 1/8 beyond a multiple of 128 is taken, the last always fits. A rule, not yet
    # measured on a TPU (no TPU benchmark exists).
    "mosaic_tpu": (
        (None, dict(blocks=(512, 256, 128))),
    ),
}


def lookup(backend: str, head_dim: int) -> dict:
  """The settings fields of `backend` for `head_dim` (a fresh dict)."""
  for max_head_dim, fields in TABLE[backend]:
    if max_head_dim is None or head_dim <= max_head_dim:
      return dict(fields)
  raise ValueError(f"tuning.TABLE[{backend!r}] has no row for head dim {head_dim}.")
