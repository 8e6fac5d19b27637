"""The command-line programs, one module each with main(): the console commands ssmax-train,
ssmax-prep-data, ssmax-eval-loss-by-position, ssmax-eval-needle, ssmax-eval-attention,
ssmax-eval-learned-s, ssmax-report, ssmax-reproduce and ssmax-reproduce-report, also run from a
checkout as python -m experiments.<module> (experiments/*.py are shims of these).

The top layer: it imports every other, nothing imports it.
"""
