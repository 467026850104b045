"""Where models are created: vllm.py (the one place a vLLM LLM starts) and hf.py (the one HF loader)."""
