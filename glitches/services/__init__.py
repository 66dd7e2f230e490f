"""Shared runtime for every GLITCHES daemon: settings, server bootstrap, Redis registry, KV wire format, stubs."""
