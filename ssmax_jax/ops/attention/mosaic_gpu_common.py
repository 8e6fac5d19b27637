"""Layout facts the Hopper forward (mosaic_gpu.py) and its backward (mosaic_gpu_vjp.py) share."""
from jax.experimental.pallas import mosaic_gpu as plgpu

ROWS_PER_WG = 64   # one wgmma M tile per compute warpgroup
ROW = plgpu.Layout.WGMMA.reduce(1)   # one value per row of a WGMMA tile
COL = plgpu.Layout.WGMMA.reduce(0)   # one value per column of a WGMMA tile
