# The two commands of the README, plus helpers. Python 3.11 is expected as python3.11 or python3.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo

.PHONY: demo test bench-ingest clean

# Set up, synthesize the demo catalogue and run the main job on it.
demo: $(BIN)/deepcrate
	$(BIN)/deepcrate demo-catalogue $(DEMO)/audio --songs-per-genre 20 --seconds 30
	$(BIN)/deepcrate ingest --audio $(DEMO)/audio --manifest $(DEMO)/audio/manifest.csv --warehouse $(DEMO)/warehouse
	$(BIN)/deepcrate sql --warehouse $(DEMO)/warehouse \
	  "SELECT genre, count(*) AS songs, sum(n_slices) AS slices FROM songs GROUP BY genre ORDER BY genre"

# Set up if needed and run the whole test suite.
test: $(BIN)/deepcrate
	$(BIN)/python -m pytest tests

bench-ingest: $(BIN)/deepcrate
	$(BIN)/python bench/ingest.py

$(BIN)/deepcrate: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,test]'
	touch $@

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
