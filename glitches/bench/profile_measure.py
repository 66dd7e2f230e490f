"""`glitches profile`: measure the live workers through the scheduler, one quantity at a time.

- prefill seconds vs prompt tokens: one request at a time, max_tokens=1, `prefill_s` (the GPU
  worker's forward pass, timed on the worker);
- decode seconds per token vs context: one request at a time, `decode_s / (tokens - 1)` (first
  token -> last token, as the client sees tokens arrive; the simulator models exactly that gap),
  at context = prompt + half the generated tokens; on the FPGA kind when it decodes there;
- with prefill_under_load (--prefill-under-load), prefill is timed while every FPGA slot but one
  is decoding a long request: the steady state of a saturated closed loop, so a machine whose
  cores are shared between workers has that contention in the profile;
- GPU decode (GPU assist): the scheduler only sends decode to the GPU when every FPGA slot is
  taken, so long "blocker" requests occupy the FPGAs while the GPU samples are taken. On a
  machine whose CPU cores are shared, the blockers' decode competes with the GPU's; GPU assist
  in a live cluster runs under the same condition;
- KV link: kv_bytes / (layers x kv_exposed_s) per streamed request (glitches.bench.profile_doc);
- batched steps (batched_rows non-empty): the GPU step loop's time at 1..N decode rows and two contexts
  (glitches.bench.profile_batched), fitted with the prefill samples into a step model
  (glitches.sim.step_model) that a batching GPU in the simulator uses; and the request path's latency
  outside the forward pass (client TTFT - prefill_s, each prefill sample);
- the GPU worker's own step log (glitches/bench/profile_steplog.py, GET /steps on its HTTP side port): every
  step it ran from the profile's start to its end, each a point of the step model with its exact
  composition and its whole-step time on the worker. When the worker serves it, the step model is fitted
  to these steps (prefills of every length, lone decodes at every context, the batched windows, and the
  mixed steps where a prefill joins decodes), with the client-timed fit beside it for comparison
  (profile_doc.batched_steps_entry). A worker that serves no log leaves the client-timed fit.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from glitches.aio import AsyncClient
from glitches.bench.power import device_power
from glitches.bench.profile_batched import measure_batched_steps, timed_stream
from glitches.bench.profile_doc import DeviceSamples, kv_link_gb_per_s, profile_document, with_host
from glitches.bench.profile_loaded import run_closed_loops
from glitches.bench.profile_steplog import last_seq, read_steps, step_point
from glitches.bench.prompts import exact_length_prompt, load_tokenizer_for
from glitches.types import ClusterStatus, Completion


@dataclass(frozen=True)
class ProfileConfig:
    address: str
    prefill_lengths: tuple[int, ...] = (32, 128, 512)  # prompt tokens
    decode_contexts: tuple[int, ...] = (32, 256, 512)  # prompt tokens before decoding
    decode_tokens: int = 16  # tokens generated per decode sample
    repeats: int = 2  # samples per point (the median is written)
    gpu_decode: bool = True  # also measure GPU-assist decode (occupies the FPGAs meanwhile)
    prefill_under_load: bool = False  # time prefill while all FPGA slots but one decode (shared CPU cores)
    batched_rows: tuple[int, ...] = (1, 2, 4, 8)  # decode rows per measured batched step; () skips them
    batched_tokens: int = 12  # tokens per request in a batched-step sample
    loaded_concurrency: tuple[int, ...] = ()  # closed loops run for the step log (glitches.bench.profile_loaded)
    host_cores: float = 0.0  # > 0: the measured devices compute on one host's CPU cores (written as host_cores)
    host_threads: tuple[tuple[str, int], ...] = ()  # (device name, host CPU threads it computes on)
    seed: int = 0
    progress: bool = True


def device_key(kind: str, backend: str) -> str:
    """The name the simulator asks for, e.g. "gpu-cpu" or "fpga-emu"."""
    return f"{kind}-{backend}"


def _samples_per_kind(status: ClusterStatus) -> dict[str, DeviceSamples]:
    devices: dict[str, DeviceSamples] = {}
    for w in status.workers:
        if not w.healthy:
            continue
        key = device_key(w.kind, w.backend)
        if key not in devices:
            power = device_power(w)
            capacity = w.kv_capacity_bytes or _host_memory_bytes()  # the CPU stand-in reports no KV limit
            devices[key] = DeviceSamples(w.kind, w.backend, w.device_name, capacity, power.power_w, power.price_usd,
                                         power.source)
    return devices


def _host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


async def _generate(client: AsyncClient, prompt: str, max_tokens: int) -> Completion:
    return await client.generate(prompt, max_tokens=max_tokens)


def _record(devices: dict[str, DeviceSamples], kinds: dict[str, str], done: Completion, what: str) -> None:
    """what: "prefill", or "decode-fpga" / "decode-gpu" (kept only if it decoded on that kind)."""
    t = done.timings
    if what == "prefill":
        devices[kinds[done.prefill_worker]].prefill.setdefault(done.prompt_tokens, []).append(t.prefill_s)
    n = done.completion_tokens
    if what == f"decode-{done.decode_device}" and n > 1 and t.decode_s > 0:
        context = done.prompt_tokens + n // 2
        devices[kinds[done.decode_worker]].decode.setdefault(context, []).append(t.decode_s / (n - 1))
    if t.kv_bytes > 0 and done.decode_device == "fpga":
        gpu = devices[kinds[done.prefill_worker]]
        gpu.kv_bytes_per_token.append(t.kv_bytes / done.prompt_tokens)
        devices[kinds[done.decode_worker]].kv_bytes_per_token.append(t.kv_bytes / done.prompt_tokens)
        link = kv_link_gb_per_s(t.kv_bytes, t.num_layers, t.kv_exposed_s)
        if link is not None:
            gpu.kv_gb_per_s.append(link)


async def _measure(config: ProfileConfig) -> dict:
    async with AsyncClient(config.address, timeout_s=600) as client:
        status = await client.status()
        devices = _samples_per_kind(status)
        kinds = {w.worker_id: device_key(w.kind, w.backend) for w in status.workers}
        fpga_slots = sum(w.slots for w in status.workers if w.kind == "fpga" and w.healthy)
        tokenizer = load_tokenizer_for(status.model)
        rng = np.random.default_rng(config.seed)
        layers = 0
        log_gpu = next((w for w in status.workers if w.kind == "gpu" and w.healthy and w.http_address), None)
        log_start = await _log_seq(log_gpu)
        steps = (len(config.prefill_lengths) + len(config.decode_contexts) * (1 + config.gpu_decode)) * config.repeats
        bar = tqdm(total=steps, desc="profile", unit="req", file=sys.stderr, disable=not config.progress)

        async def sample(tokens: int, max_tokens: int, what: str) -> Completion:
            """One request; returns its Completion (recorded only if it ran where `what` says)."""
            nonlocal layers
            prompt = exact_length_prompt(tokenizer, tokens, rng)
            if what == "prefill":  # streamed, so the client's TTFT gives the request path's overhead
                timed = await timed_stream(client, prompt, max_tokens)
                done = timed.done
                gpu = devices[kinds[done.prefill_worker]]
                gpu.request_overhead_s.append(max(0.0, timed.ttft_s - done.timings.prefill_s))
            else:
                done = await _generate(client, prompt, max_tokens)
            layers = max(layers, done.timings.num_layers)
            _record(devices, kinds, done, what)
            bar.update(1)
            return done

        if config.prefill_under_load and fpga_slots > 1:
            await _loaded_prefill_samples(client, config, sample, fpga_slots)
        else:
            for tokens in config.prefill_lengths:
                for _ in range(config.repeats):
                    await sample(tokens, 1, "prefill")
        for tokens in config.decode_contexts:
            for _ in range(config.repeats):
                await sample(tokens, config.decode_tokens, "decode-fpga" if fpga_slots else "decode-gpu")
        if config.gpu_decode and fpga_slots:
            await _gpu_assist_samples(client, config, sample, fpga_slots)
        batch_notes: list[str] = []
        if config.batched_rows:
            await _batched_samples(client, config, tokenizer, rng, devices, status, fpga_slots, batch_notes)
        if config.loaded_concurrency and log_start is not None:
            middle = sorted(config.prefill_lengths)[len(config.prefill_lengths) // 2]
            loaded = await run_closed_loops(client, lambda: exact_length_prompt(tokenizer, middle, rng),
                                            config.loaded_concurrency, config.decode_tokens)
            batch_notes.append(f"loaded phase: closed loops at concurrency {list(config.loaded_concurrency)}, "
                               f"{loaded} requests of {middle} prompt tokens and {config.decode_tokens} tokens, "
                               "seen only through the GPU's step log (glitches/bench/profile_loaded.py)")
        bar.close()
        if log_start is not None:
            batch_notes += await _logged_steps(log_gpu, log_start, devices)
    notes = batch_notes + [
        f"measured by `glitches profile` at {time.strftime('%Y-%m-%d %H:%M:%S')} against {config.address}",
        "decode seconds_per_token = decode_s / (tokens - 1) per request, on the client-visible token clock",
        "kv_transfer_gb_per_s = kv_bytes / (layers x kv_exposed_s): the link that makes the simulator's "
        "exposed time match; it includes the end marker's round trip",
        "prefill timed " + ("while every FPGA slot but one was decoding (contention captured)"
                            if config.prefill_under_load else "one request at a time (no contention)"),
        "power/price: 0 where power_known is false (never invented); emulated U280: the paper's 46 W and $8000, "
        f"idle {35.0} W assumed as in glitches/sim/profiles/devices.json",
    ]
    doc = profile_document(status.model, layers, devices, notes)
    return with_host(doc, config.host_cores, dict(config.host_threads))


async def _log_seq(gpu) -> int | None:
    """The GPU worker's last logged step, or None when it serves no step log (an older worker)."""
    if gpu is None:
        return None
    try:
        return await asyncio.to_thread(last_seq, gpu.http_address)
    except (OSError, ValueError, KeyError):  # URLError/HTTPError (404: no /steps) are OSErrors
        return None


async def _logged_steps(gpu, since: int, devices: dict[str, DeviceSamples]) -> list[str]:
    """Every step the GPU worker logged since `since`, into its kind's samples; returns the profile's notes."""
    steps, _, dropped = await asyncio.to_thread(read_steps, gpu.http_address, since)
    devices[device_key(gpu.kind, gpu.backend)].logged_steps = [step_point(s) for s in steps]
    return [f"step model fitted to the GPU worker's own step log ({gpu.worker_id}, GET /steps): {len(steps)} steps, "
            "seconds = the whole step on the worker (schedule, forward, postprocess)"
            + (f"; {dropped} steps dropped by its ring before they were read" if dropped else "")]


class Blockers:
    """Long decode requests that keep `count` FPGA slots taken (restarted if one ends at EOS)."""

    PROMPT = " ".join(["the"] * 16)  # repetitive: greedy decoding rarely meets EOS after it

    def __init__(self, client: AsyncClient, count: int):
        self.client, self.count = client, count
        self.tasks: list[asyncio.Task] = []

    async def fill(self, timeout_s: float = 60.0, settle_s: float = 5.0) -> None:
        """Start the missing blockers and wait until the FPGAs hold `count`. A blocker placed on the GPU
        instead (the FPGAs were still busy with an earlier request) would decode there for minutes and
        add a row to every GPU sample: if the FPGAs do not hold `count` within settle_s, all blockers are
        cancelled and started again."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.tasks = [t for t in self.tasks if not t.done()]
            # ignore_eos: a blocker never ends early at EOS (one that did left its slot free meanwhile)
            self.tasks.extend(asyncio.create_task(self.client.generate(self.PROMPT, max_tokens=1024, ignore_eos=True))
                              for _ in range(self.count - len(self.tasks)))
            settle = time.monotonic() + settle_s
            while time.monotonic() < min(settle, deadline):
                status = await self.client.status()
                if sum(w.active_requests for w in status.workers if w.kind == "fpga") >= self.count:
                    return
                await asyncio.sleep(0.1)
            await self.stop()
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _loaded_prefill_samples(client, config, sample, fpga_slots) -> None:
    """Prefill with every FPGA slot but one decoding (a saturated closed loop's steady state)."""
    blockers = Blockers(client, fpga_slots - 1)
    try:
        for tokens in config.prefill_lengths:
            for _ in range(config.repeats):
                await blockers.fill()
                await sample(tokens, 1, "prefill")
    finally:
        await blockers.stop()


async def _gpu_assist_samples(client, config, sample, fpga_slots) -> None:
    """Keep every FPGA slot taken by long requests, then take the GPU-decode samples."""
    blockers = Blockers(client, fpga_slots)
    try:
        for tokens in config.decode_contexts:
            for _ in range(config.repeats):
                for _attempt in range(3):  # a blocker may end (EOS) just before the sample is placed
                    await blockers.fill()
                    if (await sample(tokens, config.decode_tokens, "decode-gpu")).decode_device == "gpu":
                        break
    finally:
        await blockers.stop()


async def _batched_samples(client, config, tokenizer, rng, devices, status, fpga_slots, notes) -> None:
    """Batched GPU steps at config.batched_rows rows, prompts of the shortest and longest decode context."""
    gpu = next((w for w in status.workers if w.kind == "gpu" and w.healthy), None)
    if gpu is None:
        return
    lengths = sorted({min(config.decode_contexts), max(config.decode_contexts)})
    most = max(config.batched_rows)
    prompts = {n: [exact_length_prompt(tokenizer, n, rng) for _ in range(most)] for n in lengths}
    blockers = Blockers(client, fpga_slots) if fpga_slots else None
    try:
        points = await measure_batched_steps(client, prompts, config.batched_rows, config.batched_tokens,
                                             blockers, notes)
    finally:
        if blockers is not None:
            await blockers.stop()
    devices[device_key(gpu.kind, gpu.backend)].step_points.extend(points)


def measure_profile(config: ProfileConfig) -> dict:
    """The glitches.profile.v1 document for the cluster at config.address."""
    return asyncio.run(_measure(config))
