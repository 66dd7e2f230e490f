from fpga_worker.backend import DecodeBackend
from fpga_worker.held_backend import HeldBackend
from fpga_worker.kv_notify import NotifyingBackend


def test_the_notifying_wrapper_forwards_every_backend_method():
    """A method it does not define would silently fall back to DecodeBackend's default (e.g. 0 modeled time)."""
    public = {name for name in dir(DecodeBackend) if not name.startswith("_") and callable(getattr(DecodeBackend, name))}
    assert public <= set(vars(NotifyingBackend)), public - set(vars(NotifyingBackend))
    assert public <= set(vars(HeldBackend)), public - set(vars(HeldBackend))  # the slot/expiry wrapper too
