# Set-up from nothing: `make demo` or `make test` create .venv on first use.
# Order matters: torch first (pinned: an unpinned torch pulls CUDA wheels), then mmcv built
# from source with ops against it. pip keeps the built mmcv wheel in its cache, so a
# second set-up takes seconds instead of ~20 minutes.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
JOBS ?= $(shell nproc)
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.plabel-installed

.PHONY: install browser test demo clean-venv

install: $(STAMP)

$(STAMP): setup.py requirements/runtime.txt requirements/test.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q "setuptools<80" wheel ninja numpy opencv-python-headless
	MMCV_WITH_OPS=1 MAX_JOBS=$(JOBS) $(PIP) install -q --no-build-isolation --no-deps mmcv==2.1.0
	$(PIP) install -q --no-deps mmengine==0.10.7 mmsegmentation==1.2.2
	$(PIP) install -q -r requirements/runtime.txt -r requirements/test.txt
	$(PIP) install -q --no-build-isolation --no-deps -e .
	$(BIN)/python -c "import torch, mmcv, mmengine, mmseg, pydensecrf.densecrf, cv2, plabel_kit; print('set-up ok: torch', torch.__version__, 'mmcv', mmcv.__version__, 'mmseg', mmseg.__version__)"
	touch $(STAMP)

# Debian's Chromium, for the test that opens the HTML report in a real browser (needs root;
# without it that test is skipped outside CI)
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "chromium not installed: the report's browser test will be skipped"

test: install browser
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/plabel demo --out demo_out

clean-venv:
	rm -rf $(VENV)
