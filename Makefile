# Two commands do everything from a clean clone: `make demo` and `make test`.
# Set-up: a .venv with torch 2.13.0 (CPU build, installed first so nothing pulls a CUDA build),
# then the project. The stamp file makes re-runs skip the install.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false

.PHONY: setup demo test test-fast bench dashboard serve clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)  ## embed -> train -> index -> recommend -> evaluate on data/sample, tracked in ./mlflow
	$(BIN)/recsys demo

test: $(STAMP)  ## the whole suite (CI runs this)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## skip the tests marked slow
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[test,bench]"
	$(BIN)/python bench/encoders.py
	$(BIN)/python bench/index.py

dashboard: $(STAMP)  ## MLflow UI over the local store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db --workers 1 --host 127.0.0.1 --port 5000

serve: $(STAMP)  ## the retrieval API over the demo bundle
	$(BIN)/recsys serve --bundle artifacts/demo/bundle

clean:
	rm -rf artifacts mlflow/mlflow.db mlflow/artifacts
