# Two commands for a fresh machine:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# dicom3tools: dciodvfy validates derived DICOM; xvfb + GL/xcb libraries: napari tests on a virtual screen;
# chromium + chromium-driver: the `hires serve` page tested in a headless browser;
# orthanc + dcmtk: a real PACS and storescu/echoscu as the scanner for `hires dicom-node`;
# qgis + python3-qgis: the QGIS plugin run by qgis_process and PyQGIS (tests/test_qgis.py)
APT_PACKAGES := dicom3tools xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
	libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 \
	libxcb-cursor0 libdbus-1-3 libfontconfig1 chromium chromium-driver orthanc dcmtk \
	qgis python3-qgis

.PHONY: setup sysdeps demo test test-slow bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: an installed build (CPU, CUDA or MPS) is kept; every other range admits it
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test,napari,monai,serve,cluster]"
	touch $@

setup: $(VENV)/.installed

# System packages the tests use; installed when we are root.
sysdeps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "please install:$$missing (sudo apt-get install$$missing)"; exit 1; fi; fi

demo: setup
	$(VENV)/bin/hires demo --out hires-demo

# napari tests need a screen: a virtual one (Xvfb) when there is no display
XRUN = if [ -z "$$DISPLAY" ] && command -v xvfb-run >/dev/null; then echo "xvfb-run -a"; fi

test: setup sysdeps
	$$($(XRUN)) $(PY) -m pytest -q

test-slow: setup sysdeps
	$$($(XRUN)) $(PY) -m pytest -q -m slow

# pipeline vs compute floor, previous release and MONAI (docs/performance.md); then memory flatness
bench: setup
	$(PY) benchmarks/compare_monai.py
	$(PY) benchmarks/memory_streaming.py

clean:
	rm -rf $(VENV) hires-demo .pytest_cache
