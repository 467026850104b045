"""Memorization: greedy prefix → suffix extraction and its metrics."""
from kdstream.evaluate.extraction import ExtractOptions, run_extract_eval

__all__ = ["ExtractOptions", "run_extract_eval"]
