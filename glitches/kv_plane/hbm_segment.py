"""The emulated card's HBM as a POSIX shared-memory segment, so a sender on the same host writes KV into it directly.

One file per card under /dev/shm, mode 0600 (only this uid may map it):
    /dev/shm/glitches-hbm-<pid>-<n>-<tag>      pid = the daemon's, n = the card's number in it,
                                               tag = the worker's id (or "fpga")
It is sparse (tmpfs allocates a page when it is first written), so an 8 GiB emulated U280 costs
only the KV actually written. The daemon unlinks it on exit (close(), also run at interpreter exit);
a SIGKILLed daemon cannot, so every new one first removes segments whose pid is no longer alive
(`remove_stale`): after a restart nothing from the dead daemon stays in /dev/shm.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import mmap
import os
import re
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SHM_DIR = Path("/dev/shm")
PREFIX = "glitches-hbm-"
_NAME = re.compile(r"^glitches-hbm-(?P<pid>\d+)-(?P<n>\d+)-(?P<tag>[A-Za-z0-9_.-]*)$")
_numbers = itertools.count()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale(directory: Path = SHM_DIR) -> list[str]:
    """Unlink segments of daemons that are no longer running; returns the names removed."""
    removed = []
    for path in directory.glob(PREFIX + "*"):
        match = _NAME.match(path.name)
        if match and not _alive(int(match["pid"])):
            try:
                path.unlink()
                removed.append(path.name)
            except FileNotFoundError:
                pass
    if removed:
        log.info("removed %d stale HBM segment(s) of dead workers: %s", len(removed), ", ".join(removed))
    return removed


def safe_tag(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", tag)[:64] or "fpga"


class HbmSegment:
    """A sparse shared-memory file of `size_bytes`, mapped read-write; `memory` is it as uint8 [size_bytes]."""

    def __init__(self, size_bytes: int, tag: str = "fpga", directory: Path = SHM_DIR):
        remove_stale(directory)
        self.path = directory / f"{PREFIX}{os.getpid()}-{next(_numbers)}-{safe_tag(tag)}"
        self.size = size_bytes
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.ftruncate(fd, size_bytes)
            self._map = mmap.mmap(fd, size_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        self.memory = torch.frombuffer(self._map, dtype=torch.uint8)
        self._closed = threading.Event()
        atexit.register(self.close)

    def close(self) -> None:
        """Unlink the file (senders that mapped it keep their mapping until they drop it)."""
        if not self._closed.is_set():
            self._closed.set()
            self.path.unlink(missing_ok=True)


def map_segment(path: str, size_bytes: int) -> tuple[mmap.mmap, torch.Tensor]:
    """The sender's side: map an existing segment read-write; (the mmap, uint8 [size_bytes] over it)."""
    fd = os.open(path, os.O_RDWR)
    try:
        actual = os.fstat(fd).st_size
        if actual != size_bytes:
            raise ValueError(f"segment {path} has {actual} bytes, the placement says {size_bytes}")
        mapped = mmap.mmap(fd, size_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    return mapped, torch.frombuffer(mapped, dtype=torch.uint8)
