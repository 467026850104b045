"""The teacher pass: run the teacher once and write its next-token distributions to a store."""
from kdstream.precompute.runner import PrecomputeOptions, run_precompute

__all__ = ["PrecomputeOptions", "run_precompute"]
