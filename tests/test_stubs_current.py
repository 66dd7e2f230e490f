import subprocess
import sys


def test_checked_in_stubs_match_the_protos():
    # In a child process: protoc (grpc_tools) loads its own libprotobuf, and NIXL's bundled one aborts a process
    # that has both (the KV data-plane tests load NIXL in the test process).
    done = subprocess.run([sys.executable, "-m", "glitches.services.generate_stubs", "--check"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"stubs are stale: run `make stubs` (python -m glitches.services.generate_stubs)\n{done.stderr}"
