# The two commands of the README, plus helpers. Python 3.11 is expected as python3.11 or python3.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo

.PHONY: demo test bench-ingest bench-train clean

# Set up, synthesize the demo catalogue and run the main job on it.
demo: $(BIN)/deepcrate
	$(BIN)/deepcrate demo-catalogue $(DEMO)/audio --songs-per-genre 20 --seconds 30
	$(BIN)/deepcrate ingest --audio $(DEMO)/audio --manifest $(DEMO)/audio/manifest.csv --warehouse $(DEMO)/warehouse
	$(BIN)/deepcrate train --warehouse $(DEMO)/warehouse
	$(BIN)/deepcrate sql --warehouse $(DEMO)/warehouse \
	  "SELECT genre, songs, slices, round(song_accuracy, 3) AS song_accuracy, most_confused_with FROM evaluation ORDER BY genre NULLS FIRST"

# Set up if needed and run the whole test suite.
test: $(BIN)/deepcrate
	$(BIN)/python -m pytest tests

bench-ingest: $(BIN)/deepcrate
	$(BIN)/python bench/ingest.py

bench-train: $(BIN)/deepcrate
	$(BIN)/python bench/train.py

$(BIN)/deepcrate: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,test]'
	touch $@

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
