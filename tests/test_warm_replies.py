"""Reply warming in the scheduler (real Redis registry; the attempt itself and the worker calls stubbed): a request
a card decoded ends with one WarmPrefix to the GPU that prefilled it (prompt + reply but its last token, the
tenant's salt); none with --no-warm-replies, --no-kv-reuse, after a cancel, a GPU-assist decode or prompt logprobs;
the extend path (no GPU) warms the least loaded live GPU."""

from __future__ import annotations

import pytest

from glitches.scheduler.orchestrator import Orchestrator, _Run
from glitches.scheduler.detokenizer import Detokenizer
from glitches.scheduler.settings import SchedulerSettings
from glitches.scheduler.validation import ModelInfo
from glitches.services.cluster.registry import Registry, WorkerRecord
from glitches.services.generation.decoding import Finish
from glitches.services.generation.sampling import Sampling
from tests.conftest import REDIS_URL

MODEL = "m"
PROMPT = list(range(1, 41))
REPLY = [500, 501, 502, 503]
SALT = b"s" * 32


def _record(worker_id, kind):
    return WorkerRecord(worker_id=worker_id, kind=kind, backend="emu", emulated=1, device_name="emu",
                        address=f"127.0.0.1:{1 + len(worker_id)}", pid=1, model=MODEL, slots=1,
                        kv_capacity_bytes=10**9, kv_free_bytes=10**9, kv_bytes_per_token=1000)


class _Calls:
    def __init__(self):
        self.warms = []

    def warm_prefix(self, worker, request_id, token_ids, cache_salt):
        self.warms.append((worker.worker_id, request_id, list(token_ids), cache_salt))


def _orchestrator(redis_prefix, **settings):
    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=30)
    for worker_id, kind in (("g0", "gpu"), ("g1", "gpu"), ("f0", "fpga")):
        registry.register(_record(worker_id, kind))
    orchestrator = Orchestrator(SchedulerSettings(redis_prefix=redis_prefix, **settings), registry,
                                ModelInfo(MODEL, None, (0,), 2048, vocab_size=1000))
    orchestrator.workers = calls = _Calls()
    return orchestrator, registry, calls


def _served(orchestrator, decoder="f0", prefill="g1", cancelled=False, **sampling):
    """Run one request whose only attempt (stubbed) produced REPLY on `decoder` after a prefill on `prefill`."""
    run = _Run("req-1", PROMPT, Sampling(max_new_tokens=4, **sampling), arrived=0.0, cache_salt=SALT,
               cancelled=lambda: cancelled)
    run.detok = Detokenizer(lambda ids: "", (), 0)

    def attempt(run, attempt):
        run.decode_device = "fpga" if decoder != prefill else "gpu"
        run.decode_worker, run.prefill_worker = decoder, prefill
        for token in REPLY:
            yield orchestrator._emit(run, token)
        run.finish = Finish.LENGTH

    orchestrator._attempt = attempt
    outputs = list(orchestrator._run(run))
    assert outputs[-1].token_ids == REPLY


@pytest.fixture
def setup(redis_prefix):
    made = []

    def make(**settings):
        made.append(_orchestrator(redis_prefix, **settings))
        return made[-1]

    yield make
    for _, registry, _ in made:
        registry.close()


def test_a_card_decoded_reply_is_warmed_once_on_its_prefill_gpu(setup):
    orchestrator, _, calls = setup()
    _served(orchestrator)
    assert calls.warms == [("g1", "req-1", PROMPT + REPLY[:-1], SALT)]


def test_the_extend_path_warms_the_least_loaded_gpu(setup):
    orchestrator, registry, calls = setup()
    registry.claim_first_free("busy", "decode", ["g1"])  # g1 runs a request, g0 none
    _served(orchestrator, prefill="")
    assert [w[0] for w in calls.warms] == ["g0"]


@pytest.mark.parametrize("case", ["no-warm-replies", "no-kv-reuse", "cancelled", "gpu-assist", "prompt-logprobs"])
def test_no_warming(setup, case):
    settings = dict(warm_replies=case != "no-warm-replies", kv_reuse=case != "no-kv-reuse")
    orchestrator, _, calls = setup(**settings)
    _served(orchestrator, decoder="g1" if case == "gpu-assist" else "f0", cancelled=case == "cancelled",
            prompt_logprobs=case == "prompt-logprobs")
    assert calls.warms == []
