"""The `emu` backend: a software emulator of an FPGA decode card (no card involved).

HBM is the emulated card's memory (glitches/decode_contract/emu_kv.py): a shared-memory segment with the
ABI's layout, the weight image's share [0, kv_base) of every pseudo-channel, and one KV space
of whole blocks above it. Each request reserves a region for prompt + max_new_tokens there
(rounded up to 512-token units, as on the card); a reservation that does not fit is refused
with RESOURCE_EXHAUSTED. KV arrives in that region through TransferKV, or is written into it
by a sender on the same host (TransferKVPlaced, transport shm).

Numerics: "reference" runs the model's own float32 forward pass with transformers on the host
CPU, so its tokens equal transformers' generate. It keeps the region's elements in float32 (not
the ABI's float16: KvRegion's reference format) and, as each layer lands, reads the layer out of
the region into the float32 cache transformers attends from: a second copy on the card side,
made while prefill still runs, that a real card's kernel does not need.

Retention (emu_kv.py): steps append KV to that float32 cache only, so `retain` first writes the
stepped tokens' KV back into the region (the region then holds prompt + stepped tokens, as a card's
would), and `adopt` reads the held tokens out of the region into a new cache.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from glitches.fpga_worker.abi import HBM_CHANNELS, KV_BLOCK_TOKENS
from glitches.decode_contract.device import DecodeBackend, DeviceFacts, SensorReading
from glitches.kv_plane.kv_types import KvGeometry
from glitches.decode_contract.emu_kv import EmulatedKvCalls, EmulatedKvStore
from glitches.decode_contract.request_checks import check_sealable, check_steppable, forget, lookup, request_ids
from glitches.fpga_worker.sensors import BusyMeter, modeled_reading
from glitches.services.generation import models

KV_DTYPE_ON_CARD = torch.float32  # reference numerics: float32 elements in the ABI layout
# INT4 weights with a float16 scale and min per group of 32: 4 + 32/32 = 5 bits per weight
WEIGHT_IMAGE_BITS_PER_WEIGHT = 5


@dataclass
class _Request:
    reserve_tokens: int
    # per layer: K and V float32 [1, H_kv, tokens, D] read out of the region once the layer landed
    landed: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    prompt_tokens: int = 0
    cache: DynamicCache | None = None  # built at seal()


class EmulatedCard(EmulatedKvCalls, DecodeBackend):
    def __init__(self, source: models.ModelSource, hbm_bytes: int, threads: int = 0, tag: str = "fpga"):
        if threads:
            torch.set_num_threads(threads)
        self.model = models.load_causal_lm(source, "cpu", "float32")
        config = self.model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self._geometry = KvGeometry(config.num_hidden_layers, config.num_key_value_heads, head_dim, KV_DTYPE_ON_CARD)
        n_weights = sum(p.numel() for p in self.model.parameters())
        self.weight_image_bytes = n_weights * WEIGHT_IMAGE_BITS_PER_WEIGHT // 8
        self.hbm_bytes = hbm_bytes
        self.kv = EmulatedKvStore(hbm_bytes, -(-self.weight_image_bytes // HBM_CHANNELS), config.num_hidden_layers,
                                  config.num_key_value_heads, head_dim, KV_DTYPE_ON_CARD, tag)
        self._requests: dict[str, _Request] = {}
        self._lock = threading.Lock()  # guards _requests
        self._compute_lock = threading.Lock()  # one kernel step at a time, like one card
        self.meter = BusyMeter()  # time spent stepping, for the modeled power (sensors())

    def facts(self) -> DeviceFacts:
        return DeviceFacts(backend="emu", emulated=True,
                           device_name="software emulator of an Alveo U280 decode card (no card)",
                           hbm_bytes=self.hbm_bytes, kv_capacity_bytes=self.kv.capacity_bytes,
                           extra={"numerics": "reference", "kv_dtype": "float32"})

    def sensors(self) -> SensorReading:
        return modeled_reading(self.meter)  # modeled, labelled so: an emulator has no sensors

    def geometry(self) -> KvGeometry:
        return self._geometry

    def kv_free_bytes(self) -> int:
        return self.kv.free_bytes()

    def kv_cached_bytes(self) -> int:
        return self.kv.evictable_bytes()

    def kv_granularity_tokens(self) -> int:
        return HBM_CHANNELS * KV_BLOCK_TOKENS  # regions hold whole 512-token units

    def reserve(self, request_id: str, max_tokens: int) -> None:
        self.kv.reserve(request_id, max_tokens)  # AlreadyExists / ResourceExhausted
        with self._lock:
            self._requests[request_id] = _Request(max_tokens)

    def _get(self, request_id: str) -> _Request:
        return lookup(self._requests, self._lock, request_id)

    def layer_landed(self, request_id: str, layer: int, tokens: int) -> None:
        request, held = self._get(request_id), self.kv.get(request_id)
        if not held.written[layer, :tokens].all():
            return  # seal() reports what is missing
        key, value = held.region.read(layer, tokens)  # float32 [H_kv, tokens, D]
        request.landed[layer] = (key.unsqueeze(0), value.unsqueeze(0))

    def seal(self, request_id: str, prompt_tokens: int) -> None:
        request, held = self._get(request_id), self.kv.get(request_id)
        check_sealable(held.written, prompt_tokens, held.region.plan.capacity_tokens)
        cache = DynamicCache(config=self.model.config)
        for layer in range(self._geometry.num_layers):
            key, value = request.landed.get(layer) or (None, None)
            if key is None or key.shape[2] != prompt_tokens:
                self.layer_landed(request_id, layer, prompt_tokens)
                key, value = request.landed[layer]
            cache.layers[layer].lazy_initialization(key, value)
            cache.layers[layer].keys, cache.layers[layer].values = key, value
        request.prompt_tokens = prompt_tokens
        request.cache = cache
        request.landed = {}

    def step(self, request_id: str, token_id: int, position: int) -> torch.Tensor:
        request = self._get(request_id)
        check_steppable(request_id, request.cache is not None, position, request.reserve_tokens)
        ids = torch.tensor([[token_id]], dtype=torch.long)
        with self._compute_lock, self.meter.busy(), torch.inference_mode():
            out = self.model(input_ids=ids, position_ids=torch.tensor([[position]]), use_cache=True,
                             logits_to_keep=1, **models.cache_kwargs(self.model, request.cache))
        return out.logits[0, -1].float()

    def release(self, request_id: str) -> bool:
        known = forget(self._requests, self._lock, request_id)
        return self.kv.release(request_id) or known

    def retain(self, request_id: str, tokens: list[int], root: bytes) -> bool:
        """Keep the KV of `tokens` (prompt + stepped tokens) as cache; False: not kept (release it)."""
        request, held = self._requests.get(request_id), self.kv.find(request_id)
        if request is None or held is None or request.cache is None:
            return False
        stepped = request.cache.get_seq_length()
        if stepped != len(tokens) or stepped > held.region.plan.capacity_tokens:
            return False
        if stepped > request.prompt_tokens:
            for layer in range(self._geometry.num_layers):
                cached = request.cache.layers[layer]
                start = request.prompt_tokens
                held.region.write(layer, start, cached.keys[:, :, start:stepped], cached.values[:, :, start:stepped])
        forget(self._requests, self._lock, request_id)
        return self.kv.retain(request_id, tokens, root)

    def adopt(self, request_id: str, prompt: list[int], root: bytes, max_tokens: int, min_held: int) -> int:
        """Reserve for `max_tokens` starting from the longest held prefix of `prompt`; returns the tokens held."""
        n = self.kv.adopt(request_id, prompt, root, max_tokens, min_held)
        held = self.kv.get(request_id)
        cache = DynamicCache(config=self.model.config)
        if n:
            for layer in range(self._geometry.num_layers):
                key, value = held.region.read(layer, n)  # float32 [H_kv, n, D]
                key, value = key.unsqueeze(0), value.unsqueeze(0)
                cache.layers[layer].lazy_initialization(key, value)
                cache.layers[layer].keys, cache.layers[layer].values = key, value
        with self._lock:
            self._requests[request_id] = _Request(max(max_tokens, held.region.plan.capacity_tokens),
                                                  prompt_tokens=n, cache=cache)
        return n

    def active_requests(self) -> list[str]:
        return request_ids(self._requests, self._lock)
