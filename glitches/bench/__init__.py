"""`glitches bench` (load generator for a live cluster) and `glitches profile` (measured device profiles)."""
