# Two entry points for a fresh machine (Python 3.11, no GPU): `make demo` and `make test`.
# Both are idempotent: the virtual environment is built once and rebuilt when a pyproject changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
CONTRIB := $(wildcard contrib/*/pyproject.toml)

.PHONY: install demo test

$(VENV)/.installed: pyproject.toml hooks/pyproject.toml $(CONTRIB)
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: a plain "torch" requirement would pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e hooks -e ".[transformers,tgi,dev]" $(foreach p,$(CONTRIB),-e $(dir $(p)))
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/metagen plugins list
	$(VENV)/bin/metagen run --config examples/demo.toml \
		"What is 12 + 7?" "Name a color of the sky."

test: install
	$(PY) -m pytest
