"""Memorization analysis of extract-eval directories: features, compare, classify (+ filter), report.

Each command is a maths module and a command module: features.py + features_run.py, compare.py +
compare_run.py, classify.py + classify_run.py, and report.py (the command) + plots.py (its figures).
files.py names every directory and file they read or write."""
