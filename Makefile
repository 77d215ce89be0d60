# The two set-up commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA ?= unet-search-runs/demo-fluorescence
PYTEST_ARGS ?= --durations=25

# Never reach a hub or an update server from anything started here.
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export RAY_USAGE_STATS_ENABLED := 0
# mkdocs-material prints a notice about its successor on every build
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test lint typecheck install browser clean docs

# The report test renders the HTML report in headless Chromium, and the napari plugin's tests
# draw a real viewer on Qt's offscreen platform, whose OpenGL needs an X display (Xvfb, which
# tests/conftest.py starts) and Mesa: Debian's packages, installed here in one apt call when
# a binary is missing (as root, else through sudo).
CHROMIUM := /usr/bin/chromium
XVFB := /usr/bin/Xvfb
SYSTEM_PACKAGES := chromium xvfb libgl1 libegl1 libgl1-mesa-dri libxkbcommon0 libfontconfig1 libdbus-1-3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# uv fetches and installs the ~170 packages in parallel (pip: 4-5 min on a fresh 2-core
# machine). --compile-bytecode as pip does: this machine sets PYTHONDONTWRITEBYTECODE=1, so
# without .pyc files every Ray worker would compile torch, Ray and MLflow from source again
# (measured: the suite took 23 min instead of ~12). pip stays the fallback.
UV_VERSION := 0.13.9

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	($(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION) \
	  && $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]') \
	  || $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	test -d $(DEMO_DATA) || $(BIN)/unet-search make-data synthetic $(DEMO_DATA) --n 60 \
	  --size 200 --max-size 400 --object-px 12 --style fluorescence
	$(BIN)/unet-search check-data $(DEMO_DATA) --set val_fraction=0.2
	$(BIN)/unet-search search --space search_spaces/quick.yaml --data $(DEMO_DATA)

$(CHROMIUM) $(XVFB) &:
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES) \
	  || ($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES))

browser: $(CHROMIUM) $(XVFB)

lint: $(STAMP)
	$(BIN)/ruff check unet_search tests bench
	$(BIN)/ruff format --check unet_search tests bench

# The documentation site: docs/ (its configuration page generated from the config schema) into
# site/; strict, so a broken link or a stale reference fails (tests/test_docs.py builds it too).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite's tests leave the second of this machine's 2 cores idle most of the time (they
# wait for the processes they start), so two things run beside the main pytest, their output
# after its own, and any of the three failing fails the target: mypy (~45 s on one core,
# most of it reading torch's, Ray's and MLflow's types) and a second pytest of the tests
# that run the console script in processes of their own: the cluster walk
# (tests/cli/test_cluster.py: its own Ray cluster and MLflow server, ~3 min) and
# tests/cli/test_cli.py (each command a process, ~3 min), and the ONNX exports of every
# architecture family (tests/serve/test_onnx.py, ~50 s of torch.export; the side run
# finished ~4.5 min before the main one without it), and MLflow servers of their own
# (tests/tracking/test_tracking.py, ~40 s). They share no state with the other tests and
# train no model (a session fixture they used was made a second time there: the tests on
# the suite's trained models run in the main pytest, which trains them anyway). Both at a lower priority (nice
# 10): they take the CPU the main pytest leaves, not its own (at equal priority test_cli's
# DDP test ran 2.2x slower beside the cluster walk). The main pytest's Ray workers run at its
# own priority (tests/conftest.py sets RAY_worker_niceness=0; Ray's default, +15, put its
# trials below the side run: main 735 s, side 534 s; at 0: 694 s and 705 s, 33 s less in that
# run; a second run of the same tree took 823 s and 818 s: runs here vary by ~2 minutes).
# `make test SIDE_TESTS=` runs everything in one pytest; PYTEST_ARGS takes options (a path
# there runs beside SIDE_TESTS).
SIDE_TESTS ?= tests/cli/test_cluster.py tests/cli/test_cli.py tests/serve/test_onnx.py \
  tests/tracking/test_tracking.py
TYPES_LOG := .mypy_cache/make-test.log
SIDE_LOG := .mypy_cache/make-test-side.log

test: $(STAMP) $(CHROMIUM) $(XVFB) lint
	@mkdir -p .mypy_cache
	nice -n 10 $(BIN)/mypy > $(TYPES_LOG) 2>&1 & types=$$!; side=; \
	if [ -n "$(SIDE_TESTS)" ]; then \
	  nice -n 10 $(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS) $(SIDE_TESTS) > $(SIDE_LOG) 2>&1 & \
	  side=$$!; \
	fi; \
	$(BIN)/pytest $(PYTEST_ARGS) $(foreach t,$(SIDE_TESTS),--ignore=$(t)); tests=$$?; \
	sided=0; if [ -n "$$side" ]; then wait $$side; sided=$$?; \
	  echo "$(BIN)/pytest $(SIDE_TESTS)"; cat $(SIDE_LOG); fi; \
	wait $$types; typed=$$?; echo "$(BIN)/mypy"; cat $(TYPES_LOG); \
	[ $$tests = 0 ] && [ $$sided = 0 ] && [ $$typed = 0 ]


clean:
	rm -rf unet-search-runs .pytest_cache .mypy_cache .ruff_cache site
