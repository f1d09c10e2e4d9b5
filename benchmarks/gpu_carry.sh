#!/usr/bin/env bash
# Assemble what one run of benchmarks/gpu.py on a lent GPU machine carries (under its 64 MiB limit),
# then print the one command line to run there. From the repository root, after `make setup`:
#
#   bash benchmarks/gpu_carry.sh            # or: make gpu-carry
#
# .gpu-carry/ (git-ignored) then holds the Goodbooks subset prepared as `make results` prepares it
# (no tokenized catalogs: the GPU machine tokenizes on its own cores, outside any timing),
# and all-MiniLM-L6-v2 in float16 (gpu.py loads it as float32). The quality run is scored there by
# beeray's own metrics, so no package travels.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu-carry
BIN=${VENV:-.venv}/bin
SHARED=${SHARED_DATA:-../shared/data}
LIMIT=$((64 * 1024 * 1024))
export HF_HUB_OFFLINE=1

mkdir -p "$CARRY"
rm -rf "$CARRY/wheels"  # an older carry's RecPack wheel
if [ ! -f "$CARRY/goodbooks/stats.json" ]; then
  "$BIN/beeray" prepare goodbooks --input "$SHARED/goodbooks" --out "$CARRY/goodbooks"
fi
rm -rf "$CARRY/goodbooks/tokens"
if [ ! -f "$CARRY/minilm/config.json" ]; then
  "$BIN/python" -c "import sys; from beeray.models import DEFAULT_MODEL, load_model, save_model; \
save_model(load_model(DEFAULT_MODEL), sys.argv[1], 'float16')" "$CARRY/minilm"
fi

# What travels: the tracked files, untracked files git does not ignore, and .gpu-carry.
bytes() { xargs -0 -r du -cb 2>/dev/null | awk 'END {print $1 + 0}'; }
tree=$(( $(git ls-files -z | bytes) + $(git ls-files -z --others --exclude-standard | bytes) ))
carry=$(du -sb "$CARRY" | cut -f1)
total=$((tree + carry))
printf 'carry: %s (%.1f MiB) + working tree %.1f MiB = %.1f MiB of 64\n' "$CARRY" \
  "$(echo "$carry / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -ge "$LIMIT" ]; then
  echo "gpu_carry.sh: $total bytes is over the 64 MiB a run may carry" >&2
  exit 1
fi
mode=${1:---quick}
echo "run with carry [\"$CARRY\"]:"
echo "set -o pipefail; export HF_HUB_OFFLINE=1 && nvidia-smi -L && python3 benchmarks/gpu.py $mode" \
     "--data $CARRY/goodbooks --model $CARRY/minilm --out \$OUT/gpu.json 2>&1 | tee \$OUT/gpu.log"
