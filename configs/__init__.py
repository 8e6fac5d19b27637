"""One-line re-exports of ssmax_jax/configs/ (the shipped configs), so that
python -m experiments.train --config=configs/<name>.py keeps working from a checkout."""
