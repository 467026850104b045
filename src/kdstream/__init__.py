"""kdstream: run a teacher once with vLLM, store its next-token distributions in Zarr, distill
students from the store, and measure what each model memorized."""

__version__ = "0.1.0"
