# Two commands for a fresh machine:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := dicom3tools

.PHONY: setup sysdeps demo test test-slow bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: an installed build (CPU, CUDA or MPS) is kept; every other range admits it
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# System tools the tests use (dciodvfy validates derived DICOM); installed when we are root.
sysdeps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "please install:$$missing (sudo apt-get install$$missing)"; exit 1; fi; fi

demo: setup
	$(VENV)/bin/hires demo --out hires-demo

test: setup sysdeps
	$(PY) -m pytest -q

test-slow: setup sysdeps
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) benchmarks/memory_streaming.py

clean:
	rm -rf $(VENV) hires-demo .pytest_cache
