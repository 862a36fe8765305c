# The two commands of the README, plus helpers. Python 3.11 is expected as python3.11 or python3.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo
PACK_ENV := build/pack-env
ENV_ARCHIVE := dist/deepcrate-env.tar.gz
TF_ENV_ARCHIVE := dist/deepcrate-env-tensorflow.tar.gz
# musicnn's wheel carries the pretrained weights of train.model=musicnn; it declares numpy<1.17,
# which cannot sit beside numpy 2, so it is installed without its dependencies (its code is never run)
MUSICNN := musicnn==0.1.0

.PHONY: demo test browser notation lint package package-tensorflow pack-env wheel bench-ingest bench-train bench-embed bench-index bench-rebuild bench-quality bench-scale clean

# Set up, synthesize the demo catalogue, rebuild everything on it, show recommendations.
demo: $(BIN)/deepcrate
	$(BIN)/deepcrate demo-catalogue $(DEMO)/audio --songs-per-genre 20 --seconds 30
	$(BIN)/deepcrate rebuild --audio $(DEMO)/audio --manifest $(DEMO)/audio/manifest.csv --warehouse $(DEMO)/warehouse \
	  --report $(DEMO)/report.html
	$(BIN)/deepcrate recommend --warehouse $(DEMO)/warehouse -k 5 \
	  --song "$$(ls $(DEMO)/audio/trance | head -n 1)"

# Set up if needed and run the whole test suite (the cluster test needs the packed environment).
test: $(BIN)/deepcrate $(ENV_ARCHIVE) browser notation
	$(BIN)/python -m pytest tests

# The report's browser tests drive Debian's Chromium; where it cannot be installed they are
# skipped, saying why (a DOM-level test still checks the page).
APT := $(if $(filter 0,$(shell id -u)),,sudo -n) apt-get
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  $(APT) install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	  { $(APT) update -q >/dev/null 2>&1 && $(APT) install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "Chromium could not be installed: the report's browser tests will be skipped"

# The tempo and key test renders tunes from their notation: Debian's abcmidi, fluidsynth and a
# 6 MB General MIDI soundfont; where they cannot be installed it is skipped, saying why.
NOTATION_PACKAGES := abcmidi fluidsynth timgm6mb-soundfont
notation:
	@command -v abc2midi >/dev/null && command -v fluidsynth >/dev/null && test -f /usr/share/sounds/sf2/TimGM6mb.sf2 || \
	  $(APT) install -y -q --no-install-recommends $(NOTATION_PACKAGES) >/dev/null 2>&1 || \
	  { $(APT) update -q >/dev/null 2>&1 && $(APT) install -y -q --no-install-recommends $(NOTATION_PACKAGES) >/dev/null 2>&1; } || \
	  echo "abcmidi, fluidsynth or the soundfont could not be installed: the notated tempo and key test will be skipped"

# Style (.ruff.toml): ruff's default rules at the project's 120-column lines; the layers
# (.importlinter, docs/architecture.md): imports point down and no stage imports another.
lint: $(BIN)/deepcrate
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The whole rebuild at 2,000 and 10,000 songs (about an hour on 2 cores): bench/results/scale.json
bench-scale: $(BIN)/deepcrate
	$(BIN)/python bench/scale.py

bench-ingest: $(BIN)/deepcrate
	$(BIN)/python bench/ingest.py

bench-train: $(BIN)/deepcrate
	$(BIN)/python bench/train.py

bench-embed: $(BIN)/deepcrate
	$(BIN)/python bench/embed.py

bench-index: $(BIN)/deepcrate
	$(BIN)/python bench/index.py

bench-rebuild: $(BIN)/deepcrate package
	$(BIN)/python bench/rebuild.py

# Needs apt-get (Debian's game-soundtrack packages); the corpus is cached in ~/.cache/deepcrate-bench.
bench-quality: $(BIN)/deepcrate
	$(BIN)/python bench/real_corpus.py
	$(BIN)/python bench/quality.py --seeds 0 1 2

# What executors need on a cluster where nothing is installed (docs/cluster.md):
# the project as a wheel (--py-files) and its dependencies as a packed virtualenv (--archives).
# The product's defaults run no TensorFlow on executors (OpenVINO computes the features, the
# head is numpy), so that archive leaves it out; package-tensorflow builds one with it, for a
# driver in cluster deploy mode and for recipes that embed with a Keras model (seed, fine_tune=all).
package: wheel $(ENV_ARCHIVE)
package-tensorflow: wheel $(TF_ENV_ARCHIVE)

# Spark puts only .zip, .egg and .jar --py-files on the executors' sys.path: the wheel
# (a zip) is copied to dist/deepcrate.zip for that.
wheel: $(BIN)/deepcrate
	rm -f dist/deepcrate-*.whl dist/deepcrate.zip
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .
	rm -rf build/lib build/bdist*
	cp dist/deepcrate-*.whl dist/deepcrate.zip

# The dependencies only: the code travels as the wheel, so a code change needs no new archive.
# librosa compiles its numba functions on first use (~15 s in a fresh environment) and caches
# them beside its sources: they are compiled here once, so that executors load them instead.
$(ENV_ARCHIVE): setup.py | $(BIN)/deepcrate
	$(MAKE) --no-print-directory pack-env ARCHIVE=$@ EXTRAS=

$(TF_ENV_ARCHIVE): setup.py | $(BIN)/deepcrate
	$(MAKE) --no-print-directory pack-env ARCHIVE=$@ EXTRAS='[cpu]' WEIGHTS=$(MUSICNN)

pack-env:
	rm -rf $(PACK_ENV) && $(PYTHON) -m venv $(PACK_ENV)
	$(PACK_ENV)/bin/pip install --quiet --upgrade pip
	$(PACK_ENV)/bin/pip install --quiet '.$(EXTRAS)' venv-pack==0.2.0
	$(if $(WEIGHTS),$(PACK_ENV)/bin/pip install --quiet --no-deps $(WEIGHTS))
	$(PACK_ENV)/bin/python -c "import numpy, librosa; librosa.feature.mfcc(y=numpy.zeros(22050, numpy.float32))"
	$(PACK_ENV)/bin/pip uninstall --quiet --yes deepcrate pyspark py4j  # Spark puts its own on PYTHONPATH
	rm -rf build/lib build/bdist*
	mkdir -p dist && $(PACK_ENV)/bin/venv-pack --quiet --force -p $(PACK_ENV) -o $(ARCHIVE)

$(BIN)/deepcrate: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,test,report]'
	$(BIN)/pip install --quiet --no-deps $(MUSICNN)
	touch $@

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
