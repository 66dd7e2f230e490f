"""Tool calling is rendering + constrained decoding, so it works on every decode path: on a GPU-only cluster
(`glitches up --fpga-workers 0`: every request decodes on GPU assist; with `--gpu-decode-workers 1`, in the
slow tier, on the decode GPU) a required tool call through chat completions and through /v1/responses gives
the same greedy call as on the session cluster (which decodes on emulated FPGA cards)."""

from __future__ import annotations

import uuid

import openai
import pytest

from glitches import Client
from glitches.services.generation import models
from tests.conftest import REDIS_URL
from tests.e2e.conftest import assert_idle, metric, start_up, stop_up
from tests.e2e.tool_definitions import ASK, TIME, WEATHER

pytestmark = pytest.mark.e2e
MODEL = models.DEFAULT_MODEL


def _calls(oai: openai.OpenAI):
    chat = oai.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                       max_tokens=48, temperature=0)
    response = oai.responses.create(model=MODEL, input=ASK[0]["content"], max_output_tokens=48, temperature=0,
                                    tools=[{"type": "function", **WEATHER["function"]}], tool_choice="required",
                                    parallel_tool_calls=False)
    return ([(c.function.name, c.function.arguments) for c in chat.choices[0].message.tool_calls],
            [(i.name, i.arguments) for i in response.output if i.type == "function_call"])


@pytest.mark.parametrize("decode_gpus", ["0", pytest.param("1", marks=pytest.mark.slow)])
def test_tool_calls_on_a_gpu_only_cluster_equal_the_emulated_fpga_ones(gateway_cluster, decode_gpus):
    """decode_gpus 0: GPU assist; 1: every request decodes on a decode-role GPU (its KV sent there)."""
    prefix = f"glitches-e2e-tools-{uuid.uuid4().hex[:8]}"
    proc, address = start_up(["--port", "0", "--fpga-workers", "0", "--gpu-slots", "2", "--no-prefix-cache",
                              "--gpu-decode-workers", decode_gpus,
                              "--redis-url", REDIS_URL, "--redis-prefix", prefix, "--gateway-port", "0"])
    client = Client(address, timeout_s=300)
    pids = [w.pid for w in client.status().workers]
    try:
        assert {w.kind for w in client.status().workers} == {"gpu"}
        oai = openai.OpenAI(base_url=proc.gateway_url + "/v1", api_key="unused", max_retries=0, timeout=300)
        gpu_only = _calls(oai)
        assert gpu_only[0] and gpu_only[1]
        assert gpu_only == _calls(gateway_cluster["oai"])
        if decode_gpus == "1":  # the calls decoded there: their KV reached the decode GPU
            assert metric(proc.http_addresses["gpu-decode-0"], "glitches_kv_received_bytes_total") > 0
        assert_idle(gateway_cluster["registry"])
    finally:
        client.close()
        stop_up(proc, pids)
