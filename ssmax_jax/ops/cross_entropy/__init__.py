"""Softmax cross-entropy of hidden states against the output matrix, chunked along the
sequence, with its gradient fused in (`cross_entropy_sum`, api.py). Backends, one module each,
each with `unsupported_reason(*, batch, chunk_len, logits_spec, platform)`: reference.py
('xla': `xla_loss_and_grad`, the contract they share, and `reference_cross_entropy_sum`, the
materialised loss) and triton.py (the Pallas kernel, 'pallas'; GPU, CPU in interpret mode)."""
from ssmax_jax.ops.cross_entropy.api import (IMPLEMENTATIONS, LOGITS_DTYPES, check_options,
                                             cross_entropy_sum)
from ssmax_jax.ops.cross_entropy.reference import (reference_cross_entropy_sum,
                                                   xla_loss_and_grad)
