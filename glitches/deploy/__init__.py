"""`glitches deploy`: one container per device on one node, through the Docker Engine API."""
