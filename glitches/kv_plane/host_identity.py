"""Which host (and which /dev/shm) a process runs on: two workers with equal identities can share memory.

boot id (one per kernel boot) + hostname + the device number of /dev/shm's mount: containers on one
host share the boot id but usually not /dev/shm, and then the identities differ.
"""

from __future__ import annotations

import os
import socket
from functools import cache


@cache
def host_identity() -> str:
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    except OSError:
        boot = "no-boot-id"
    try:
        shm = f"{os.stat('/dev/shm').st_dev:x}"
    except OSError:
        shm = "no-shm"
    return f"{boot}/{socket.gethostname()}/{shm}"
