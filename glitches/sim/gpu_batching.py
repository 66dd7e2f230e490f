"""A GPU that batches continuously, as the GPU worker does now (glitches/gpu_worker/step_loop.py), for the simulator.

Protocol. Node processes hand the GPU jobs and wait on their events:
- `prefill(rec, cached_tokens)`: the prompt's tokens after the `cached_tokens` the GPU's prefix cache
  holds are split into chunks (each priced with the tokens before it as context); returns an event fired
  when its last chunk's step ends (the first token is out then). The job joins the loop
  `timing.request_overhead_s` after the call (a measured profile's request path outside the forward
  pass: gRPC, scheduler, tokenizer; 0 otherwise).
- `decode(rec, steps)`: a GPU-assist decode; returns an event fired after `steps` more tokens. Each
  step of the loop appends one token time to rec.token_times_s.
The loop runs one forward pass at a time: every decoding request's next token (one row each) plus
prefill chunks, first come first served, filling what is left of `max_batch_tokens`. A pass with
nothing to do waits for the next job. Step time: `step_time_s`: the timing's `step_s` when it has one
(glitches/sim/profiles.py RooflineTiming.step_s; a measured profile's fitted StepModel,
glitches/sim/step_model.py, when `glitches profile` measured batched steps); otherwise, for measured
profiles without batched samples, the chunks' prefill time plus one decode step at the longest context,
a stated approximation. Busy time is split between
prefill and decode by the share of the step's tokens, for the power figures.
With a shared host CPU (`host_cpu`, glitches/sim/host_cpu.py) and a device profile with host_threads > 0,
each step is a host CPU job of its step time: it takes longer while other devices compute on the host, and
the busy time is the step's wall time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import simpy

from glitches.sim.host_cpu import HostCpu, compute
from glitches.sim.profiles import Timing


def step_time_s(timing: Timing, chunks: list[tuple[int, int]], decode_contexts: list[int],
                streamed_chunks: int = 0) -> float:
    """Seconds of one batched pass (chunks: (new tokens, tokens already in KV); one context per decode row;
    streamed_chunks: the chunks that end a prefill whose KV streams to another device during the pass)."""
    step = getattr(timing, "step_s", None)
    if step is not None:
        return step(chunks, decode_contexts, streamed_chunks)
    prefill = sum(timing.prefill_s(past + new) - (timing.prefill_s(past) if past else 0.0) for new, past in chunks)
    return prefill + (timing.decode_step_s(max(decode_contexts)) if decode_contexts else 0.0)


@dataclass
class _Prefill:
    rec: object  # sim.node.RequestRecord
    done: simpy.Event
    computed: int = 0  # prompt tokens already in KV (from the prefix cache, then computed chunks)


@dataclass
class _Decode:
    rec: object
    done: simpy.Event
    left: int  # tokens still to generate


class BatchingLoop:
    def __init__(self, env: simpy.Environment, device, max_batch_tokens: int, host_cpu: HostCpu | None = None):
        self.env = env
        self.device = device  # sim.node.SimDevice: its profile's timing and host_threads, busy counters
        self.max_batch_tokens = max_batch_tokens
        self.host_cpu = host_cpu  # the node's shared host CPU, or None
        self._prefills: deque[_Prefill] = deque()
        self._decodes: list[_Decode] = []
        self._wake = env.event()
        self.steps = 0
        env.process(self._run())

    def prefill(self, rec, cached_tokens: int = 0) -> simpy.Event:
        job = _Prefill(rec, self.env.event(), computed=cached_tokens)
        delay_s = getattr(self.device.profile.timing, "request_overhead_s", 0.0)
        if delay_s > 0:
            self.env.process(self._join_after(job, delay_s))
        else:
            self._join(job)
        return job.done

    def _join_after(self, job: _Prefill, delay_s: float):
        yield self.env.timeout(delay_s)
        self._join(job)

    def _join(self, job: _Prefill) -> None:
        self._prefills.append(job)
        self._poke()

    def decode(self, rec, steps: int) -> simpy.Event:
        job = _Decode(rec, self.env.event(), steps)
        self._decodes.append(job)
        self._poke()
        return job.done

    def _poke(self) -> None:
        if not self._wake.triggered:
            self._wake.succeed()

    def _run(self):
        while True:
            if not self._prefills and not self._decodes:
                yield self._wake
                self._wake = self.env.event()
                continue
            rows = list(self._decodes)
            contexts = [len(d.rec.token_times_s) + d.rec.prompt_tokens for d in rows]
            budget = max(0, self.max_batch_tokens - len(rows))
            chunks, chunked = [], []
            for job in self._prefills:
                if budget <= 0:
                    break
                take = min(budget, job.rec.prompt_tokens - job.computed)
                chunks.append((take, job.computed))
                chunked.append((job, take))
                budget -= take
            streamed = sum(1 for job, take in chunked  # the last chunk of a prefill that decodes elsewhere
                           if job.computed + take >= job.rec.prompt_tokens
                           and job.rec.decode_device != self.device.worker_id)
            step_s = step_time_s(self.device.profile.timing, chunks, contexts, streamed)
            step_s = yield from compute(self.env, self.host_cpu, self.device.profile.host_threads, step_s)
            self.steps += 1
            prefill_tokens = sum(n for n, _ in chunks)
            share = prefill_tokens / (prefill_tokens + len(rows)) if prefill_tokens + len(rows) else 0.0
            self.device.busy_prefill_s += step_s * share
            self.device.busy_decode_s += step_s * (1 - share)
            for job, take in chunked:
                job.computed += take
                if job.computed >= job.rec.prompt_tokens:
                    self._prefills.remove(job)
                    job.done.succeed()
            for job in rows:
                job.rec.token_times_s.append(self.env.now)
                job.left -= 1
                if job.left == 0:
                    self._decodes.remove(job)
                    job.done.succeed()
