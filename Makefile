# Two commands set up a fresh machine:  `make demo` (install + serve the built-in demo)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo demo-train test browser benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.14.1 / torchvision 0.29.1 come from the machine's local wheel store when it has one.
	$(PY) -m pip install --quiet -e ".[lite,dev,scale]"
	touch $(STAMP)

# The main job: the web page and HTTP API on the built-in model and 81-product grocery catalog.
demo: install
	$(VENV)/bin/skulens serve

# Train, evaluate and predict on the small bundled sample (about 2 minutes on 2 cores).
demo-train: install
	$(VENV)/bin/skulens demo

test: install browser
	$(PY) -m pytest -q

# The web-page test drives Debian's chromium through Playwright (Playwright's own browser download
# needs internet access that CI lacks). Without root or sudo the test is skipped, with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	    echo "chromium is missing and cannot be installed here (not root, no sudo): the browser test will be skipped"; exit 0; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	    || echo "could not install chromium: the browser test will be skipped"; }

benchmark: install
	$(PY) benchmarks/grocery_classification.py --model efficientnet_lite2 --img-size 256 --epochs 12 \
		--freeze-stages 3 --ema-decay 0.998 --catalog-images --keep last --cache-scale 1.6 --hue-jitter 0 \
		--out runs/bench-lite2-hue0 --name grocery_efficientnet_lite2_hue0

clean:
	rm -rf runs build src/*.egg-info
