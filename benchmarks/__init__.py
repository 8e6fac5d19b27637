"""Developer tools: benchmarks, the offline compile, profile and HLO analysis, device scripts.

Run from the repository root (`python -m benchmarks.bench_train`); the library never imports them.
"""
