"""The wrappers of glitches/decode_contract/wrappers.py around a real emulated card: each adds only its own
part, and every call it does not define reaches the card unchanged (what ForwardingBackend's 17
hand-written methods used to do)."""

import pytest

from glitches.decode_contract.wrappers import KvHeld, Notifying, SlotLimit
from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.services.runtime.errors import ResourceExhausted
from glitches.services.cluster.kv_holds import KvHolds


@pytest.fixture(scope="module")
def card(tiny_source):
    return EmulatedCard(tiny_source, hbm_bytes=64 * 1024**2, tag="wrappers")


def test_the_composed_wrappers_limit_slots_hold_kv_and_notify(card):
    changes = []
    notifying = Notifying(card)
    holds = KvHolds(60.0, notifying.release)
    held = KvHeld(SlotLimit(notifying, 1), holds)
    notifying.on_change = lambda: changes.append(card.kv_free_bytes())
    held.reserve("a", 16)
    assert holds.summary().requests == 1 and changes == [card.kv_free_bytes()]
    with pytest.raises(ResourceExhausted, match="slot"):
        held.reserve("b", 16)
    assert card.active_requests() == ["a"] and len(changes) == 1  # refused before anything was placed
    assert held.release("a") is True and holds.summary().requests == 0 and len(changes) == 2
    assert held.release("a") is False and len(changes) == 2  # unknown id: no change, no notice


def test_what_a_wrapper_does_not_define_is_the_cards_own(card):
    held = KvHeld(SlotLimit(Notifying(card), 4), KvHolds(60.0, card.release))
    assert held.geometry() == card.geometry()
    assert held.facts() == card.facts()
    assert held.kv_granularity_tokens() == card.kv_granularity_tokens()
    assert held.kv_memory() is not None and held.kv_memory().shm_path == card.kv_memory().shm_path
    assert held.modeled_step_s(100) == card.modeled_step_s(100)
    assert held.step.__self__ is card  # stepping is the card's, not a default of the interface
