"""Where the C-simulated decode kernel's shared library is, built with g++ on first use when there is none.

The kernel's sources ship in the package (glitches/fpga_worker/kernel/: *.h, *.cpp, Makefile, vitis/), so an
installed wheel can build its own library. `library_path()` looks, in order, at:
1. $GLITCHES_CSIM_LIBRARY: an explicit file (the container images point it at the library their builder
   stage compiled, so a final image needs no compiler);
2. kernel/build/libglitches_csim.so beside the sources: a source checkout after `make setup`;
3. <cache>/kernel-csim/<key>/libglitches_csim.so, cache = $GLITCHES_CACHE_DIR or ~/.cache/glitches (as the
   model cache), key = the first 16 hex digits of the sha256 of the kernel's sources and Makefile, so an
   upgraded package builds anew. Missing, it is built there by the kernel's own Makefile
   (`make -C <kernel dir> csim BUILD=<temporary dir>`, about 3 s with g++ -O2; the sources' directory is
   only read), then renamed into place: concurrent first uses each build and the last rename wins, with
   the same bytes.
Without g++ or make the error is FailedPrecondition saying what to install or which path to set.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from glitches.services.runtime.errors import FailedPrecondition

KERNEL_DIR = Path(__file__).resolve().parent / "kernel"
LIBRARY_NAME = "libglitches_csim.so"
IN_TREE_LIBRARY = KERNEL_DIR / "build" / LIBRARY_NAME
LIBRARY_ENV = "GLITCHES_CSIM_LIBRARY"
BUILD_TIMEOUT_S = 600


def _sources() -> list[Path]:
    return sorted([*KERNEL_DIR.glob("*.h"), *KERNEL_DIR.glob("*.cpp"), KERNEL_DIR / "Makefile"])


def source_key() -> str:
    """sha256 (16 hex digits) over the kernel's file names and bytes: the cache directory's name."""
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_library() -> Path:
    cache = Path(os.environ.get("GLITCHES_CACHE_DIR", Path.home() / ".cache" / "glitches"))
    return cache / "kernel-csim" / source_key() / LIBRARY_NAME


def library_path(in_tree: Path = IN_TREE_LIBRARY) -> Path:
    """The library to load: the explicit one, the source checkout's, or the cache's (built now if missing)."""
    explicit = os.environ.get(LIBRARY_ENV)
    if explicit:
        if not Path(explicit).is_file():
            raise FailedPrecondition(f"${LIBRARY_ENV}={explicit} is not a file: unset it to build the kernel with "
                                     f"g++ into {cache_library().parent}")
        return Path(explicit)
    if in_tree.is_file():
        return in_tree
    target = cache_library()
    if not target.is_file():
        build(target)
    return target


def build(target: Path) -> None:
    """Compile the kernel's C simulation into `target` with its Makefile (g++, make)."""
    missing = [tool for tool in ("make", os.environ.get("CXX", "g++")) if shutil.which(tool) is None]
    if missing:
        raise FailedPrecondition(
            f"the C-simulated decode kernel is not built and {' and '.join(missing)} cannot be found to build it: "
            f"install g++ and make (it builds into {target.parent} on first use), or in a source checkout run "
            f"`make setup`, or set ${LIBRARY_ENV} to a built {LIBRARY_NAME}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch:
        run = subprocess.run(["make", "-s", "-C", str(KERNEL_DIR), "csim", f"BUILD={scratch}"],
                             capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        built = Path(scratch) / LIBRARY_NAME
        if run.returncode != 0 or not built.is_file():
            raise FailedPrecondition(f"building the C-simulated decode kernel from {KERNEL_DIR} failed "
                                     f"(make exit {run.returncode}): {(run.stderr or run.stdout)[-2000:]}")
        os.replace(built, target)
