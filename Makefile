# The two quick-start commands: `make repro` (set up + run the whole pipeline) and
# `make test` (set up + lint + tests). Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(BIN):$(PATH)

.PHONY: setup repro test test-fast test-e2e lint bench ui serve server demo clean retrain

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,server,demo]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with rnngen and its pinned dependencies

repro: setup     ## run the whole pipeline, then put the model in service (the first one becomes champion)
	$(BIN)/dvc repro
	$(BIN)/rnngen promote

test: setup lint ## lint, then the whole suite: fast tier + end-to-end tier (what CI runs), on two workers
	$(BIN)/pytest -q -n 2 --dist loadfile -m "e2e or not e2e"

test-fast: setup ## the fast tier only (no e2e-marked tests)
	$(BIN)/pytest -q -n 2 --dist loadfile -m "not e2e"

test-e2e: setup  ## the end-to-end tier only: real dvc repro, registry and CLI on tiny settings
	$(BIN)/pytest -q -n 2 --dist loadfile -m e2e

REPRO_FLAGS ?=

retrain: setup   ## what .github/workflows/retrain.yml runs: pull, repro, metrics diff, promote, push
	@if [ -n "$$($(BIN)/dvc remote list)" ]; then $(BIN)/dvc pull --allow-missing; fi
	$(BIN)/dvc repro $(REPRO_FLAGS)
	@mkdir -p reports
	$(BIN)/dvc metrics diff --md > reports/metrics_diff.md
	@cat reports/metrics_diff.md
	$(BIN)/rnngen promote --report reports/promotion.md
	@if [ -n "$$($(BIN)/dvc remote list)" ]; then $(BIN)/dvc push; fi

lint: setup
	$(BIN)/ruff check .

bench: setup     ## time the whole pipeline, stage by stage (bench/pipeline_time.py; the others: see bench/)
	$(BIN)/python bench/pipeline_time.py

ui: setup        ## open the MLflow UI on the project's store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

serve: setup     ## serve the champion on 127.0.0.1:5001: score, sample, inpaint over HTTP (Ctrl-C stops)
	$(BIN)/rnngen serve --port $${PORT:-5001}

demo: setup      ## the champion on a web page at http://127.0.0.1:7860: draw, repair, judge, walk (Ctrl-C stops)
	$(BIN)/rnngen demo

server: setup    ## a team's tracking server + tuning database: PostgreSQL and mlflow server (Ctrl-C stops)
	$(BIN)/rnngen server

clean:           ## remove untracked pipeline outputs and local stores (keeps .venv and tracked files)
	rm -rf data/raw data/split models tune/best_params.json tune/warm_start.pt tune/study checkpoints classifier/classifier.pt \
		mlflow.db mlflow.db.lock mlartifacts
