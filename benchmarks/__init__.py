"""kdstream benchmarks: one module per figure, run as ``python -m benchmarks.<name>`` from the
repository root. Each saves its figures with the commit, the machine and the command to
``benchmarks/results/<name>.json`` (benchmarks/results.py); docs/benchmarks.md quotes them."""
