# The two set-up commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA ?= unet-search-runs/demo-data
PYTEST_ARGS ?=

# Never reach a hub or an update server from anything started here.
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test lint typecheck install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	test -d $(DEMO_DATA) || $(BIN)/unet-search make-data synthetic $(DEMO_DATA) --n 120 --size 96
	$(BIN)/unet-search check-data $(DEMO_DATA) --set image_size=64 --set val_fraction=0.2
	$(BIN)/unet-search search --space search_spaces/quick.yaml --data $(DEMO_DATA)

lint: $(STAMP)
	$(BIN)/ruff check unet_search tests
	$(BIN)/ruff format --check unet_search tests

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf unet-search-runs .pytest_cache .mypy_cache .ruff_cache
