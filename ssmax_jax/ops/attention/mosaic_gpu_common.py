"""Layout facts the Hopper forward (mosaic_gpu.py) and its backward (mosaic_gpu_vjp.py) share."""
from jax import lax
from jax.experimental.pallas import mosaic_gpu as plgpu

ROWS_PER_WG = 64   # one wgmma M tile per compute warpgroup
ROW = plgpu.Layout.WGMMA.reduce(1)   # one value per row of a WGMMA tile
COL = plgpu.Layout.WGMMA.reduce(0)   # one value per column of a WGMMA tile


def query_tile_row0(causal, n_tiles):
  """The first query row of this block's tile (two warpgroups of rows). Causal: the most
  expensive tiles first, so that the tail of the launch is short."""
  tile = (n_tiles - 1 - lax.axis_index("t")) if causal else lax.axis_index("t")
  return tile * (2 * ROWS_PER_WG)
