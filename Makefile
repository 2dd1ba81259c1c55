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

.PHONY: setup demo test test-fast bench bench-shared bench-quality bench-quality-ml1m bench-ablation bench-serving bench-embedding bench-training bench-batch bench-index-scale bench-end-to-end dashboard notebooks serve clean

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

bench: $(STAMP)  ## encoder and index throughput (bench/results/*.json)
	$(BIN)/python bench/encoders.py
	$(BIN)/python bench/index.py

bench-shared: $(STAMP)  ## slowdown beside a busy loop and beside a second copy (train, batch, API, demo); ~40 min
	$(BIN)/python bench/shared_machine.py --sections train,batch,api,demo

bench-quality: $(STAMP)  ## recsys vs peers on ml-100k (needs implicit, and LightFM: see bench/README.md)
	$(BIN)/pip install --quiet -e ".[bench]"
	OMP_NUM_THREADS=1 $(BIN)/python bench/quality.py --dataset ml-100k --protocols loo,cold --seeds 3

bench-quality-ml1m: $(STAMP)  ## the same on ml-1m (no timestamps: seeded random order; ~2 h on 2 cores)
	$(BIN)/pip install --quiet -e ".[bench]"
	OMP_NUM_THREADS=1 $(BIN)/python bench/quality.py --dataset ml-1m --protocols loo,cold --seeds 3

bench-ablation: $(STAMP)  ## one recsys run per lever on ml-100k, each an MLflow child run
	OMP_NUM_THREADS=1 $(BIN)/python bench/ablation.py bench/configs/ablation_ml100k.yaml

bench-serving: $(STAMP)  ## HTTP load test of `recsys serve` on the ml-100k bundle
	$(BIN)/pip install --quiet -e ".[bench]"
	test -d artifacts/ml100k/bundle || $(BIN)/recsys train -c pipelines/configs/ml100k.yaml --out artifacts/ml100k/bundle -q
	$(BIN)/python bench/serving/loadtest.py --bundle artifacts/ml100k/bundle

# Issue 23: each figure against its limit, measured in the same run (docs/benchmarks.md, "Performance against the limit").
bench-embedding: $(STAMP)  ## embedding step vs the bare encoder forward; warm-cache and 1%-changed re-runs
	$(BIN)/python bench/embedding.py

bench-training: $(STAMP)  ## seconds per epoch, a profile, time-to-quality against the peers
	$(BIN)/python bench/training.py

bench-batch: $(STAMP)  ## batch top-100 for all ml-1m users vs user-tower forward + one exact faiss search
	$(BIN)/python bench/batch.py

bench-index-scale: $(STAMP)  ## 1M items, 100k users: build, memory, single/batched query, recall@10
	$(BIN)/python bench/index_scale.py

bench-end-to-end: $(STAMP)  ## the demo and the ml-1m pipeline, step by step (each within 15 min)
	$(BIN)/python bench/end_to_end.py --target demo
	$(BIN)/python bench/end_to_end.py --target ml-1m

RECSYS_HOME ?= $(CURDIR)

dashboard: $(STAMP)  ## MLflow UI over the store every command writes ($RECSYS_HOME/mlflow); prints the training-runs address
	$(BIN)/python -m recsys.dashboard --store sqlite:///$(RECSYS_HOME)/mlflow/mlflow.db --host 127.0.0.1 --port 5000

notebooks: $(STAMP)  ## execute notebooks/ on the demo data (full, not QUICK); rendered copies with figures in docs/notebooks/
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python scripts/render_notebooks.py

serve: $(STAMP)  ## the retrieval API over the demo bundle
	$(BIN)/recsys serve --bundle artifacts/demo/bundle

clean:
	rm -rf artifacts mlflow/mlflow.db mlflow/artifacts
