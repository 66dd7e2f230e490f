"""What every `glitches` command module shares: the GLITCHES_* name of a flag's environment variable."""

from __future__ import annotations


def env_var(name: str) -> str:
    """GLITCHES_ + the flag's name upper-cased, e.g. "redis-url" -> GLITCHES_REDIS_URL."""
    return "GLITCHES_" + name.upper().replace("-", "_")
