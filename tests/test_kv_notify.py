from fpga_worker.backend import DecodeBackend
from fpga_worker.forwarding_backend import ForwardingBackend


def test_the_wrappers_base_forwards_every_backend_method():
    """A method it does not define would silently fall back to DecodeBackend's default (e.g. 0 modeled time)."""
    public = {name for name in dir(DecodeBackend) if not name.startswith("_") and callable(getattr(DecodeBackend, name))}
    assert public <= set(vars(ForwardingBackend)), public - set(vars(ForwardingBackend))
