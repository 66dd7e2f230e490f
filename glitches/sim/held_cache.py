"""The simulator's model of the KV a device keeps after a request ends (GPU prefix cache, card retention).

Per device, one entry per conversation: the leading tokens of that conversation whose KV the device
holds (a card: the last turn's prompt + reply, which it decoded; a GPU: the last prompt it prefilled),
and their bytes. Entries are evictable: LRU by bytes within what the running requests leave free, so
at any time held bytes + KV in use <= capacity, and the device's free KV (as placement sees it) counts
held bytes as free (they can be given up), as the live workers report it.

Protocol:
  held(conversation, prompt_tokens) -> tokens of the prompt the device holds (0: none); a look only.
  keep(conversation, tokens, kv_in_use_bytes) -> the entry replaces the conversation's older one (most
                                       recent), then the least recent entries go until everything fits.
  take(conversation)                -> the entry leaves the cache (a request adopted it: in use again).
  shrink(kv_in_use_bytes)           -> evict LRU entries until held + in use fit (a request reserved KV).
"""

from __future__ import annotations

from collections import OrderedDict


class HeldCache:
    def __init__(self, capacity_bytes: float, kv_bytes_per_token: float):
        self.capacity_bytes = capacity_bytes
        self.kv_bytes_per_token = kv_bytes_per_token
        self._tokens: OrderedDict[str, int] = OrderedDict()  # conversation -> held tokens, least recent first
        self.evictions = 0  # entries evicted for room since start

    @property
    def held_bytes(self) -> float:
        return sum(self._tokens.values()) * self.kv_bytes_per_token

    def held(self, conversation: str, prompt_tokens: int) -> int:
        return min(self._tokens.get(conversation, 0), prompt_tokens)

    def keep(self, conversation: str, tokens: int, kv_in_use_bytes: float) -> None:
        self._tokens.pop(conversation, None)
        if tokens * self.kv_bytes_per_token + kv_in_use_bytes > self.capacity_bytes:
            return  # it cannot fit even alone
        self._tokens[conversation] = tokens
        self.shrink(kv_in_use_bytes)

    def take(self, conversation: str) -> None:
        self._tokens.pop(conversation, None)

    def shrink(self, kv_in_use_bytes: float) -> None:
        while self._tokens and self.held_bytes + kv_in_use_bytes > self.capacity_bytes:
            self._tokens.popitem(last=False)
            self.evictions += 1
