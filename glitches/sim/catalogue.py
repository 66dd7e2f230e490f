"""The device catalogue `glitches plan` searches: per kind, a timing profile, price, power and cards per node.

File (glitches/sim/profiles/catalogue.json, or one of your own in the same form; docs/sim_profile_format.md):
    {"<kind>": {"profile": "<devices.json entry>", "price_usd": USD, "power_w": {"prefill": W, "decode": W,
     "idle": W}, "cards_per_node": N, "basis": {"<figure>": "measured | vendor-stated | roofline-derived |
     assumption (source)"}}, ...}
The catalogue's price and power replace the devices.json ones; timing and KV capacity come from the profile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from glitches.scheduler.placement import DeviceKind
from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.profiles import DeviceProfile, load_device_profile

CATALOGUE_FILE = Path(__file__).with_name("profiles") / "catalogue.json"


@dataclass(frozen=True)
class CatalogueEntry:
    name: str  # the catalogue's kind name, e.g. "h100"
    profile: DeviceProfile  # timing, KV, and this entry's price and power
    cards_per_node: int  # cards of this kind one node (server) takes
    basis: dict[str, str] = field(default_factory=dict)  # figure -> how it is known, with its source

    @property
    def kind(self) -> DeviceKind:
        return self.profile.kind

    @property
    def peak_power_w(self) -> float:
        return max(self.profile.prefill_w, self.profile.decode_w)


def load_catalogue(model: str, path: str | Path = CATALOGUE_FILE, only: tuple[str, ...] = ()) -> dict[str, CatalogueEntry]:
    """Every kind in the catalogue file (or only those named), profiled for `model`."""
    table = json.loads(Path(path).read_text())
    names = [k for k in table if not k.startswith("_")]
    unknown = set(only) - set(names)
    if unknown:
        raise InvalidArgument(f"not in the catalogue {path}: {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    entries = {}
    for name in (only or names):
        spec = table[name]
        try:
            power = spec["power_w"]
            profile = replace(load_device_profile(spec["profile"], model), name=name, price_usd=float(spec["price_usd"]),
                              prefill_w=float(power["prefill"]), decode_w=float(power["decode"]),
                              idle_w=float(power["idle"]))
            cards = int(spec["cards_per_node"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"catalogue {path}: kind {name!r} needs profile, price_usd, power_w "
                                  f"{{prefill, decode, idle}} and cards_per_node: {exc}") from None
        if cards < 1 or profile.price_usd < 0:
            raise InvalidArgument(f"catalogue {path}: kind {name!r}: cards_per_node >= 1 and price_usd >= 0")
        entries[name] = CatalogueEntry(name, profile, cards, dict(spec.get("basis", {})))
    return entries
