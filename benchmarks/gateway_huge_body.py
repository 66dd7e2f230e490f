"""How long /healthz stalls while the gateway handles a 3.7 MB chat body of 110k messages.

    python -m benchmarks.gateway_huge_body [--code-root DIR] [--runs 3]

Starts `glitches gateway` from DIR (default: this checkout; give an older tree, e.g. one made with
`git archive <commit> | tar -x -C DIR`, for the before figure) with no scheduler behind it, posts the
body while polling /healthz every 20 ms, and prints the slowest /healthz and the reply per run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from glitches.cluster import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code-root", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": args.code_root, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "glitches", "gateway", "--scheduler", "127.0.0.1:1", "--port",
                             str(port), "--timeout-s", "5"], env=env, cwd=args.code_root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        body = json.dumps({"model": "smollm2-135m-instruct",
                           "messages": [{"role": "user", "content": "hi"}] * 110_000}).encode()
        for run in range(args.runs):
            result = {}

            def post():
                started = time.monotonic()
                result["reply"] = httpx.post(url + "/v1/chat/completions", content=body, timeout=120,
                                             headers={"content-type": "application/json"})
                result["s"] = time.monotonic() - started

            thread = threading.Thread(target=post)
            thread.start()
            slowest = 0.0
            while thread.is_alive():
                started = time.monotonic()
                httpx.get(url + "/healthz", timeout=60)
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.02)
            reply = result["reply"]
            print(f"run {run}: slowest /healthz {slowest:.3f} s; reply {reply.status_code} after {result['s']:.2f} s: "
                  f"{reply.json()['error'].get('code')}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
