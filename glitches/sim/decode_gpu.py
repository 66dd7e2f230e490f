"""Decode-role GPUs in the simulator: GPUs that take the KV another GPU prefilled and decode it, batching.

The live GPU worker with `--roles decode` (glitches/gpu_worker/settings.py) runs no prompts: a prefill GPU
streams it the KV (shm, nixl or grpc) and it decodes in its step loop, one forward pass carrying every
request's next token. The scheduler (glitches/scheduler/orchestrator.py `_place`) sees it through its
registry record as a WorkerView of kind "gpu", roles {decode}, decode class DECODE_CLASS_GPU (placement
ranks it after the dedicated decode cards, DECODE_CLASS_DEDICATED), its slots, the requests it holds and
its free KV bytes; `SimDevice.view` builds the same view from the simulated device (ROLES, DECODE_CLASS).

The model (NodeConfig.decode_gpus GPUs of the node's GPU profile, worker ids dgpu0, dgpu1, ...):
- Slots: NodeConfig.decode_gpu_slots, or with 0 the GPU worker's own default from its KV budget
  (glitches/gpu_worker/assist_slots.py, what `--slots 0` resolves to: the typical 2048-token requests the
  KV holds, at most half of max_batch_tokens; the model's context taken as MODEL_CONTEXT_TOKENS).
- KV: placement's need is the most demanding decode-role kind's (prompt + output tokens x its bytes per
  token), as the live scheduler's kv_bytes_needed; the decode GPU reserves its own bytes on admission and
  frees them when the request ends.
- Transfer: the prefill GPU streams the prompt's KV layer by layer over its outgoing link
  (sim.kv_transfer.SharedLink at NodeConfig.link_gb_per_s, shared with its streams to FPGAs).
- TTFT: the live Prefill RPC returns only when the KV has arrived (gpu_worker engine.prefill waits for the
  sender's finish), and the scheduler emits the first token (the prefill's logits gave it) then, so the
  first token is out at prefill end + exposed transfer. No decode step is in the TTFT.
- Decode: the device's BatchingLoop (glitches/sim/gpu_batching.py) with decode rows only, its step time the
  step model's for those rows at their contexts. Always batching, whatever NodeConfig.gpu_batching says of
  the prefill GPUs: the live GPU worker has only its batching loop.
Not modelled: a decode GPU's prefix cache for KV reuse (it may hold a finished conversation, and then
placement can pick it to extend, which the simulator runs as a card's forced steps, unbatched).
"""

from __future__ import annotations

from glitches.gpu_worker.assist_slots import default_assist_slots
from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS
from glitches.services.cluster.worker_caps import DECODE_CLASS_GPU, ROLE_DECODE
from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.kv_transfer import kv_transfer_s
from glitches.sim.partial_reuse import moved_kv_tokens

ROLES = frozenset({ROLE_DECODE})  # what a `--roles decode` GPU worker publishes
DECODE_CLASS = DECODE_CLASS_GPU
MODEL_CONTEXT_TOKENS = 4096  # the model context the default slots assume (as glitches/sim/plan.py's GPU-assist slots)


def check(config) -> None:
    """A node with decode GPUs needs a GPU profile and a prefill GPU to send them KV (sim.node.NodeConfig)."""
    if config.decode_gpus < 0 or config.decode_gpu_slots < 0:
        raise InvalidArgument(f"decode GPUs and their slots must be >= 0, got {config.decode_gpus} and "
                              f"{config.decode_gpu_slots}")
    if config.decode_gpus and (config.gpu is None or config.gpus < 1):
        raise InvalidArgument("decode GPUs take the KV a prefill GPU sends: give at least one (prefill) GPU too")


def slots(config) -> int:
    """Requests one decode GPU decodes at once: NodeConfig.decode_gpu_slots, or from its KV budget (0)."""
    if config.decode_gpu_slots:
        return config.decode_gpu_slots
    profile = config.gpu
    blocks = int(profile.kv_capacity_bytes // (KV_BLOCK_TOKENS * profile.kv_bytes_per_token))
    return default_assist_slots(blocks, MODEL_CONTEXT_TOKENS, config.gpu_max_batch_tokens)


def placement_kv_bytes(config, tokens: int, kv_bytes: float) -> float:
    """Placement's KV need for `tokens` (prompt + output): the most demanding decode-role kind's, as the live
    scheduler's kv_bytes_needed; `kv_bytes` is the node's need without decode GPUs."""
    if not config.decode_gpus:
        return kv_bytes
    return max(kv_bytes, tokens * config.gpu.kv_bytes_per_token)


def receive_and_decode(node, rec, prefill, decoder, prefill_s: float):
    """After the prefill: the KV streams to the decode GPU, the first token is out when it has arrived, then
    the decode GPU's loop steps the rest (a simpy generator; sim.node.Node._serve runs it)."""
    env = node.env
    steps = rec.output_tokens - 1
    if steps > 0:
        moved = moved_kv_tokens(rec.prompt_tokens, rec.card_held_tokens)  # all of it unless transfer-partial
        transfer_s = kv_transfer_s(moved, prefill.profile.kv_bytes_per_token, node.config.link_gb_per_s)
        rec.exposed_kv_s = prefill.link.book(env.now, prefill_s, prefill.profile.layers, transfer_s)
        yield env.timeout(rec.exposed_kv_s)
    rec.first_token_s = rec.token_times_s[0] = env.now  # the live first token waits for the KV (docstring)
    if steps > 0:
        yield decoder.loop.decode(rec, steps)
