"""Generate the Python protobuf and gRPC stubs from proto/ into glitches/services/stubs/.

    python -m glitches.services.generate_stubs            # write the stubs
    python -m glitches.services.generate_stubs --check    # exit 1 when the checked-in stubs are stale

protoc names imports after the proto path (`from glitches.v1 import ...`), which
would clash with the `glitches` SDK package, so imports are rewritten to
`glitches.services.stubs.glitches.v1`.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
STUBS_DIR = ROOT / "glitches" / "services" / "stubs"
_IMPORT = re.compile(r"^from glitches\.v1 import", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on every proto; return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for path in sorted(out_dir.rglob("*.py*")):
        path.write_text(_IMPORT.sub("from glitches.services.stubs.glitches.v1 import", path.read_text()))
        written.append(path)
    for package in {p.parent for p in written} | {out_dir}:
        while package != out_dir.parent:
            (package / "__init__.py").touch()
            package = package.parent
    return written


def stale_files() -> list[str]:
    """Names of stub files that differ from a fresh generation (missing or extra count too)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_dir = Path(tmp)
        generate(fresh_dir)
        fresh = {p.relative_to(fresh_dir): p.read_bytes() for p in fresh_dir.rglob("*") if p.is_file()}
    current = {p.relative_to(STUBS_DIR): p.read_bytes() for p in STUBS_DIR.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    return sorted(str(name) for name in fresh.keys() | current.keys() if fresh.get(name) != current.get(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when checked-in stubs are stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale stubs (run: python -m glitches.services.generate_stubs):", *stale, sep="\n  ")
            sys.exit(1)
        print("stubs are current")
        return
    STUBS_DIR.mkdir(parents=True, exist_ok=True)
    for path in STUBS_DIR.rglob("*_pb2*.py*"):
        path.unlink()
    for path in generate(STUBS_DIR):
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
