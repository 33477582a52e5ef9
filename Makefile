# Two commands set up a fresh machine:  `make demo` (install + serve the built-in demo)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install web-runtime demo demo-train test test-fast lint browser benchmark clean

install: $(STAMP) web-runtime

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.14.1 / torchvision 0.29.1 come from the machine's local wheel store when it has one.
	$(PY) -m pip install --quiet -e ".[lite,dev,scale,text]"
	touch $(STAMP)

# onnxruntime-web for the page's on-device mode (pinned npm tarball, checked, unpacked into the package;
# skulens serves it itself). Best effort: without network the page simply keeps to server mode.
web-runtime: $(STAMP)
	@$(PY) -m skulens.serving.web_runtime

# The main job: the web page and HTTP API on the built-in model and 81-product grocery catalog.
demo: install
	$(VENV)/bin/skulens serve

# Train, evaluate and predict on the small bundled sample (about 2 minutes on 2 cores).
demo-train: install
	$(VENV)/bin/skulens demo

test: install browser
	$(PY) -m pytest -q

# ruff: lint and formatting (pyproject.toml's [tool.ruff]); `ruff format` and `ruff check --fix` repair most
lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

# The quick loop while editing (under 90 s on 2 cores): no training runs, subprocess servers, browser or services.
test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser and not services"

# The web-page test drives Debian's chromium through Playwright (Playwright's own browser download
# needs internet access that CI lacks). Without root or sudo the test is skipped, with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	    echo "chromium is missing and cannot be installed here (not root, no sudo): the browser test will be skipped"; exit 0; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	    || echo "could not install chromium: the browser test will be skipped"; }

benchmark: install
	$(VENV)/bin/skulens train ../shared/datasets/grocery-store --config recipes/grocery-lite2.toml --out runs/bench-lite2-hue0
	$(VENV)/bin/skulens evaluate runs/bench-lite2-hue0 ../shared/datasets/grocery-store --split test --tta

clean:
	rm -rf runs build src/*.egg-info
