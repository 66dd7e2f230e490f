"""The simpy model of one GLITCHES node: N GPUs, M FPGAs, one scheduler queue.

Where a request goes is decided by `scheduler.placement.place`, unchanged, on
a `ClusterSnapshot` built from the simulated devices. When it is decided is
this module's rule (the live scheduler's admission, as modelled here):

- Requests wait in one FIFO queue. The head is admitted when some FPGA has a
  free decode slot (and room for its KV) or some GPU has a free GPU-assist
  slot; otherwise it waits for a completion.
- On admission `place` picks the prefill GPU and ranks the FPGAs; the first
  candidate is claimed at once (claims never fail here: one process decides).
  No candidate -> GPU assist: the request decodes on its prefill GPU.
- With `gpu_batching` a GPU runs the GPU worker's continuous batching instead
  (glitches/sim/gpu_batching.py): one forward pass carries every GPU-assist decode's next
  token and prefill chunks up to max_batch_tokens. Without it (the default):
- A GPU runs one thing at a time, a whole prefill or one decode step
  (batch size 1, no batching: the paper's HuggingFace setting). Prefills have
  priority over decode steps, so GPU assist yields to the prefills that keep
  FPGAs busy; two assisted requests on one GPU alternate token by token.
- An FPGA decodes one request at a time (batch size 1, the paper's setting),
  starting when the last KV layer has arrived (see `sim.kv_transfer`).
- With no GPU (the paper's FPGA-only baseline) `place` cannot be used (it
  needs a GPU for prefill): each request prefills and decodes on one FPGA,
  picked by the same ranking `place` uses for FPGAs (fewest active, then id).
The PCIe link is per GPU and modelled only through the exposed transfer;
concurrent transfers from one GPU share its link (sim.kv_transfer.SharedLink).
Decode-role GPUs (NodeConfig.decode_gpus, glitches/sim/decode_gpu.py): GPUs of the node's GPU profile that
placement may pick as decode targets (after the FPGAs, as live); the prefill GPU streams them the KV over
its link, the first token is out when it has arrived, and they batch their decodes (gpu_batching's loop).

KV reuse (NodeConfig.kv_reuse; requests of a conversation, RequestRecord.conversation/turn): every
device keeps a HeldCache (glitches/sim/held_cache.py), as the live workers do: a device that decoded a
request holds its prompt + reply (a card; a GPU after GPU assist), a GPU that only prefilled holds the
prompt. Placement sees each device's held tokens of the prompt (WorkerView.cached_tokens) and the costs
(NodeConfig.reuse_costs, scheduler/reuse_cost.py) and picks a path:
- transfer / fresh: the GPU prefills what its cache lacks (glitches/sim/partial_reuse.py: one chunk of
  the new tokens over the cached context), the whole prompt's KV streams to the card;
- transfer-partial (NodeConfig.kv_reuse_partial, as the live scheduler's --kv-reuse-partial): the same
  prefill, but only the KV of [card held, prompt) streams to the card holding the rest, which adopts its
  held prefix (RequestRecord.card_held_tokens);
- extend: the card forces the uncached prompt tokens through its decode step (one decode step each, at
  its context), the last one's logits give the first token; no GPU, no transfer.
A batching GPU (gpu_batching) starts a cached prompt's chunks after its cached tokens, so the loop's step
time charges only the new tokens (and the context they attend over).

A shared host CPU (NodeConfig.host_cores > 0; glitches/sim/host_cpu.py): devices whose profile has
host_threads > 0 compute on the host's cores, shared among them. Every compute step of such a device is a
HostCpu job of its profiled (alone) seconds: a batching loop's step, a non-batching GPU's prefill and decode
steps, a card's decode steps (one token at a time, each token's time when its step ends, so every step sees
the load of the moment) and a card's forced steps on the extend path (one job: their threads do not change,
so one job is the steps back to back). Busy time is then the wall time the steps took. host_cores = 0 (the
default) or host_threads = 0: plain timeouts, as without the model. Placement does not see the sharing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from glitches.scheduler.placement import (PATH_EXTEND, PATH_TRANSFER_PARTIAL, ClusterSnapshot, DeviceKind,
                                          PlacementRequest, WorkerView, place)
from glitches.scheduler.reuse_cost import DEFAULT_REUSE_COSTS, ReuseCosts
from glitches.services.runtime.errors import InvalidArgument
from glitches.sim import decode_gpu
from glitches.sim.admission import AdmissionLimits, SimAdmission
from glitches.sim.gpu_batching import BatchingLoop
from glitches.sim.held_cache import HeldCache
from glitches.sim.host_cpu import HostCpu, compute
from glitches.sim.kv_transfer import SharedLink, kv_transfer_s
from glitches.sim.partial_reuse import cached_prefill_s, gpu_reuse_tokens, moved_kv_tokens
from glitches.sim.profiles import DeviceProfile

PREFILL_PRIORITY = 0  # lower runs first (simpy.PriorityResource)
DECODE_PRIORITY = 1
FPGA_DECODE_SLOTS = 1  # batch size 1 per FPGA (the paper's setting)


@dataclass(frozen=True)
class NodeConfig:
    gpu: DeviceProfile | None
    gpus: int
    fpga: DeviceProfile | None
    fpgas: int
    link_gb_per_s: float  # effective GPU -> FPGA PCIe bandwidth, GB/s
    gpu_decode_slots: int = 1  # requests one GPU may decode at once (GPU assist); 0 turns assist off
    gpu_batching: bool = False  # True: GPUs batch continuously (glitches/sim/gpu_batching.py), as the GPU worker does now
    gpu_max_batch_tokens: int = 512  # with gpu_batching: tokens per forward pass (the worker's --max-batch-tokens)
    decode_gpus: int = 0  # more GPUs of `gpu`'s profile with the decode role only (glitches/sim/decode_gpu.py)
    decode_gpu_slots: int = 0  # requests one decode GPU decodes at once; 0 = from its KV budget, as the worker's
    kv_reuse: bool = False  # devices keep finished conversations' KV and placement routes by it (module docstring)
    reuse_costs: ReuseCosts = DEFAULT_REUSE_COSTS  # placement's cost model (glitches/sim/reuse.py: from profiles)
    kv_reuse_partial: bool = True  # with kv_reuse: placement may send only the KV a holding card lacks (live default)
    admission: AdmissionLimits = AdmissionLimits()  # the scheduler's admission control (glitches/sim/admission.py)
    host_cores: float = 0.0  # cores of the host CPU that devices with host_threads > 0 share; 0 = not modelled


@dataclass
class RequestRecord:
    rid: int
    prompt_tokens: int
    output_tokens: int
    arrival_s: float
    prefill_device: str = ""
    decode_device: str = ""
    admitted_s: float = float("nan")
    first_token_s: float = float("nan")
    exposed_kv_s: float = 0.0  # KV transfer not hidden by the prefill, s
    token_times_s: list[float] = field(default_factory=list)  # one per output token, absolute sim time
    conversation: str = ""  # KV reuse: the conversation this turn belongs to ("" none)
    turn: int = 1  # 1 = the conversation's first request
    path: str = ""  # placement's path (placement.PATH_*)
    reused_tokens: int = 0  # prompt tokens not computed: held by the extending card or the prefill GPU
    card_held_tokens: int = 0  # transfer-partial: leading prompt tokens the card held (their KV did not move)
    rejected: bool = False  # refused by admission control (NodeConfig.admission): no token, not in the figures

    @property
    def done(self) -> bool:
        return self.rejected or len(self.token_times_s) == self.output_tokens


class SimDevice:
    """One card's state: what it holds and how long it has been busy."""

    def __init__(self, env: simpy.Environment, worker_id: str, profile: DeviceProfile, decode_slots: int,
                 roles: frozenset[str] = frozenset(), decode_class: int = 0):
        self.worker_id = worker_id
        self.roles, self.decode_class = roles, decode_class  # empty: the built-in kind's (WorkerView)
        self.profile = profile
        self.decode_slots = decode_slots
        self.compute = simpy.PriorityResource(env, capacity=1)  # one prefill or decode step at a time
        self.active = 0  # requests held: queued/running prefill, or decoding here
        self.decoding = 0  # requests that will decode / are decoding here
        self.kv_used_bytes = 0.0
        self.busy_prefill_s = 0.0
        self.busy_decode_s = 0.0
        self.loop: BatchingLoop | None = None  # a batching GPU's step loop (NodeConfig.gpu_batching)
        self.link = SharedLink()  # a GPU's outgoing KV link, shared by its concurrent transfers (sim.kv_transfer)
        self.cache = HeldCache(profile.kv_capacity_bytes, profile.kv_bytes_per_token)  # with kv_reuse

    def view(self, cached_tokens: int = 0) -> WorkerView:
        free = max(0, int(self.profile.kv_capacity_bytes - self.kv_used_bytes))  # held KV counts as free
        return WorkerView(self.worker_id, self.profile.kind, self.decode_slots, self.active, free,
                          roles=self.roles, decode_class=self.decode_class, cached_tokens=cached_tokens)

    def can_decode(self, kv_bytes: float) -> bool:
        fits = self.kv_used_bytes + kv_bytes <= self.profile.kv_capacity_bytes
        return self.decoding < self.decode_slots and fits


class Node:
    def __init__(self, env: simpy.Environment, config: NodeConfig):
        self.env = env
        self.config = config
        self.gpus = [SimDevice(env, f"gpu{i}", config.gpu, config.gpu_decode_slots) for i in range(config.gpus)]
        self.fpgas = [SimDevice(env, f"fpga{i}", config.fpga, FPGA_DECODE_SLOTS) for i in range(config.fpgas)]
        decode_gpu.check(config)
        self.decode_gpus = [SimDevice(env, f"dgpu{i}", config.gpu, decode_gpu.slots(config), decode_gpu.ROLES,
                                      decode_gpu.DECODE_CLASS) for i in range(config.decode_gpus)]
        self.devices = {d.worker_id: d for d in self.gpus + self.decode_gpus + self.fpgas}
        if config.host_cores < 0:
            raise InvalidArgument(f"host cores must be >= 0 (0: devices share no host CPU), got {config.host_cores}")
        self.host_cpu = HostCpu(env, config.host_cores) if config.host_cores > 0 else None
        if config.gpu_batching:
            for gpu in self.gpus:
                gpu.loop = BatchingLoop(env, gpu, config.gpu_max_batch_tokens, self.host_cpu)
        for gpu in self.decode_gpus:  # the live GPU worker always batches
            gpu.loop = BatchingLoop(env, gpu, config.gpu_max_batch_tokens, self.host_cpu)
        self.records: list[RequestRecord] = []
        self.admission = SimAdmission(env, config.admission) if config.admission.max_active else None
        self._queue: deque[tuple[RequestRecord, simpy.Event]] = deque()
        self._wake = env.event()
        env.process(self._dispatcher())

    def submit(self, record: RequestRecord) -> simpy.Event:
        """Queue a request; the returned event fires when its last token is out (or admission refused it)."""
        done = self.env.event()
        self.records.append(record)
        if self.admission is None:
            self._queue.append((record, done))
            self._kick()
        else:
            self.env.process(self._admitted(record, done))
        return done

    def _admitted(self, record: RequestRecord, done: simpy.Event):
        """Hold an admission place from entry to the last token; refused: rejected, done at once."""
        if not (yield self.admission.enter()):
            record.rejected = True
            done.succeed()
            return
        served = self.env.event()
        self._queue.append((record, served))
        self._kick()
        yield served
        self.admission.leave()
        done.succeed()

    def _kick(self) -> None:
        if not self._wake.triggered:
            self._wake.succeed()

    def _dispatcher(self):
        while True:
            yield self._wake
            self._wake = self.env.event()
            while self._queue and self._admit(*self._queue[0]):
                self._queue.popleft()

    def _kv_bytes(self, rec: RequestRecord) -> float:
        decoder = self.config.fpga or self.config.gpu
        tokens = rec.prompt_tokens + rec.output_tokens
        return decode_gpu.placement_kv_bytes(self.config, tokens, tokens * decoder.kv_bytes_per_token)

    def _admit(self, rec: RequestRecord, done: simpy.Event) -> bool:
        kv = self._kv_bytes(rec)
        if not self.gpus:
            free = [f for f in self.fpgas if f.can_decode(kv)]
            if not free:
                return False
            fpga = min(free, key=lambda d: (d.active, d.worker_id))
            self._start(rec, done, fpga, fpga, kv)
            return True
        if not any(d.can_decode(kv) for d in self.devices.values()):
            return False
        snapshot = ClusterSnapshot(tuple(d.view(self._held(d, rec)) for d in self.devices.values()))
        request = PlacementRequest(rec.prompt_tokens, rec.output_tokens, int(kv), reuse=self.config.kv_reuse,
                                   partial=self.config.kv_reuse and self.config.kv_reuse_partial)
        placement = place(snapshot, request, self.config.reuse_costs) if self.config.kv_reuse else place(snapshot, request)
        rec.path = placement.path
        if placement.path == PATH_EXTEND:
            card = self.devices[placement.extend_worker]
            card.cache.take(rec.conversation)  # in use again
            rec.reused_tokens = placement.held_tokens
            self._start(rec, done, card, card, kv)
            return True
        prefill = self.devices[placement.prefill_worker]
        if placement.path == PATH_TRANSFER_PARTIAL:  # the holding card adopts its prefix, is sent the rest
            decoder = self.devices[placement.extend_worker]
            decoder.cache.take(rec.conversation)
            rec.card_held_tokens = placement.held_tokens
        else:
            decoder = self.devices[placement.decode_candidates[0]] if placement.decode_candidates else prefill
        rec.reused_tokens = gpu_reuse_tokens(self._held(prefill, rec), rec.prompt_tokens)
        if decoder is prefill:  # GPU assist: the request's KV grows from the cached prefix (in use, not cache)
            prefill.cache.take(rec.conversation)
        self._start(rec, done, prefill, decoder, kv)
        return True

    def _held(self, device: SimDevice, rec: RequestRecord) -> int:
        return device.cache.held(rec.conversation, rec.prompt_tokens) if self.config.kv_reuse and rec.conversation \
            else 0

    def _start(self, rec, done, prefill: SimDevice, decoder: SimDevice, kv: float) -> None:
        rec.admitted_s = self.env.now
        rec.prefill_device, rec.decode_device = prefill.worker_id, decoder.worker_id
        if decoder not in self.gpus:  # a decode-role device reserves its own KV bytes (placement's need: the most)
            kv = (rec.prompt_tokens + rec.output_tokens) * decoder.profile.kv_bytes_per_token
        prefill.active += 1
        if decoder is not prefill:
            decoder.active += 1
        decoder.decoding += 1
        decoder.kv_used_bytes += kv
        decoder.cache.shrink(decoder.kv_used_bytes)
        serve = self._extend if rec.path == PATH_EXTEND else self._serve
        self.env.process(serve(rec, done, prefill, decoder, kv))

    def _serve(self, rec: RequestRecord, done, prefill: SimDevice, decoder: SimDevice, kv: float):
        if prefill.loop is not None:  # a batching GPU: chunks share forward passes with decodes and other prompts
            started_s = self.env.now
            yield prefill.loop.prefill(rec, rec.reused_tokens)
            prefill_s = self.env.now - started_s
        else:
            with prefill.compute.request(priority=PREFILL_PRIORITY) as turn:
                yield turn
                prefill_s = cached_prefill_s(prefill.profile.timing, rec.prompt_tokens - rec.reused_tokens,
                                             rec.reused_tokens)
                prefill_s = yield from self._compute(prefill, prefill_s)  # the wall time, when shared
                prefill.busy_prefill_s += prefill_s
        if self.config.kv_reuse and rec.conversation and decoder is not prefill:  # GPU assist keeps at _finish
            prefill.cache.keep(rec.conversation, rec.prompt_tokens, prefill.kv_used_bytes)
        steps = rec.output_tokens - 1
        if steps > 0 and decoder.profile.kind == DeviceKind.FPGA and decoder is not prefill:
            # as live: the Prefill RPC answers (and the scheduler sends the first token) once the KV has landed
            moved = moved_kv_tokens(rec.prompt_tokens, rec.card_held_tokens)
            transfer_s = kv_transfer_s(moved, prefill.profile.kv_bytes_per_token, self.config.link_gb_per_s)
            rec.exposed_kv_s = prefill.link.book(self.env.now, prefill_s, prefill.profile.layers, transfer_s)
            yield self.env.timeout(rec.exposed_kv_s)
        rec.first_token_s = self.env.now  # the prefill's logits give the first token (a decode GPU's: decode_gpu)
        rec.token_times_s.append(self.env.now)
        if decoder is not prefill:
            prefill.active -= 1
        if decoder is not prefill and decoder.loop is not None:  # a decode-role GPU (glitches/sim/decode_gpu.py)
            yield from decode_gpu.receive_and_decode(self, rec, prefill, decoder, prefill_s)
            self._finish(rec, done, decoder, kv)
            return
        if steps > 0 and decoder.profile.kind == DeviceKind.FPGA:
            yield from self._decode_alone(rec, decoder, steps)
        elif steps > 0 and decoder.loop is not None:
            yield decoder.loop.decode(rec, steps)
        elif steps > 0:
            yield from self._decode_shared(rec, decoder, steps)
        self._finish(rec, done, decoder, kv)

    def _extend(self, rec: RequestRecord, done, card: SimDevice, _same: SimDevice, kv: float):
        """The extend path: the card steps the prompt tokens it does not hold, forced, then decodes."""
        held = rec.reused_tokens
        force_s = float(sum(card.profile.timing.decode_step_s(c) for c in range(held + 1, rec.prompt_tokens + 1)))
        with card.compute.request(priority=DECODE_PRIORITY) as turn:
            yield turn
            force_s = yield from self._compute(card, force_s)
        card.busy_decode_s += force_s
        rec.prefill_device = ""
        rec.first_token_s = self.env.now  # the last forced step's logits give the first token
        rec.token_times_s.append(self.env.now)
        if rec.output_tokens > 1:
            yield from self._decode_alone(rec, card, rec.output_tokens - 1)
        self._finish(rec, done, card, kv)

    def _finish(self, rec: RequestRecord, done, decoder: SimDevice, kv: float) -> None:
        decoder.active -= 1
        decoder.decoding -= 1
        decoder.kv_used_bytes -= kv
        if self.config.kv_reuse and rec.conversation:
            # the decoder (a card, or a GPU after GPU assist) keeps what it decoded: the prompt and every reply
            # token but the last (never stepped)
            decoder.cache.keep(rec.conversation, rec.prompt_tokens + rec.output_tokens - 1, decoder.kv_used_bytes)
        done.succeed(rec)
        self._kick()

    def _shares_host(self, device: SimDevice) -> bool:
        return self.host_cpu is not None and device.profile.host_threads > 0

    def _compute(self, device: SimDevice, work_s: float):
        """`work_s` profiled seconds of the device's compute (on the shared host CPU if it uses it); the wall s."""
        return (yield from compute(self.env, self.host_cpu, device.profile.host_threads, work_s))

    def _decode_alone(self, rec: RequestRecord, device: SimDevice, steps: int):
        """An FPGA owns its decode: one timeout for all steps, token times computed; on a shared host CPU,
        step by step (each step's speed depends on what else computes then)."""
        if self._shares_host(device):
            with device.compute.request(priority=DECODE_PRIORITY) as turn:
                yield turn
                for j in range(1, steps + 1):
                    device.busy_decode_s += yield from self._compute(
                        device, device.profile.timing.decode_step_s(rec.prompt_tokens + j))
                    rec.token_times_s.append(self.env.now)
            return
        step_s = np.array([device.profile.timing.decode_step_s(rec.prompt_tokens + j) for j in range(1, steps + 1)])
        with device.compute.request(priority=DECODE_PRIORITY) as turn:
            yield turn
            start = self.env.now
            yield self.env.timeout(float(step_s.sum()))
        device.busy_decode_s += float(step_s.sum())
        rec.token_times_s.extend((start + np.cumsum(step_s)).tolist())

    def _decode_shared(self, rec: RequestRecord, device: SimDevice, steps: int):
        """A GPU decodes step by step, so prefills (priority) can cut in between tokens."""
        for j in range(1, steps + 1):
            with device.compute.request(priority=DECODE_PRIORITY) as turn:
                yield turn
                step_s = yield from self._compute(device, device.profile.timing.decode_step_s(rec.prompt_tokens + j))
                device.busy_decode_s += step_s
            rec.token_times_s.append(self.env.now)
