"""Memorization: greedy prefix → suffix extraction and its metrics."""
from kdstream.extract.run import ExtractOptions, run_extract_eval

__all__ = ["ExtractOptions", "run_extract_eval"]
