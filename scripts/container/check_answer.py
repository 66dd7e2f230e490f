"""Check the smoke test's answer: `glitches status --json` and `glitches generate --json` outputs.

Passes when the cluster has a CPU prefill worker and emulated FPGA workers, all healthy and requiring
KV-transfer tokens, and the answer is non-empty text decoded on one of those FPGA workers. Prints the answer; exits 1 with the reason otherwise.
    python scripts/container/check_answer.py STATUS.json ANSWER.json
"""

import json
import sys


def check(status: dict, answer: dict) -> list[str]:
    problems = []
    workers = status.get("workers", [])
    fpgas = {w["worker_id"]: w for w in workers if w.get("kind") == "fpga"}
    if not any(w.get("kind") == "gpu" for w in workers):
        problems.append("no prefill (gpu kind) worker registered")
    if not fpgas:
        problems.append("no FPGA worker registered")
    for w in workers:
        if not w.get("healthy"):
            problems.append(f"worker {w.get('worker_id')} is not healthy")
    for w in fpgas.values():
        if w.get("backend") != "emu" or not w.get("emulated"):
            problems.append(f"FPGA worker {w['worker_id']} is not the emulator: backend {w.get('backend')}")
        if not w.get("kv_tokens_required"):
            problems.append(f"FPGA worker {w['worker_id']} accepts KV without a scheduler-issued token")
    if not answer.get("text", "").strip():
        problems.append("empty answer")
    if answer.get("decode_device") != "fpga" or answer.get("decode_worker") not in fpgas:
        problems.append(f"decoded on {answer.get('decode_device')} worker {answer.get('decode_worker')}, "
                        f"not on an FPGA worker of {sorted(fpgas)}")
    return problems


def main() -> int:
    with open(sys.argv[1]) as f:
        status = json.load(f)
    with open(sys.argv[2]) as f:
        answer = json.load(f)
    problems = check(status, answer)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if problems:
        print(json.dumps({"status": status, "answer": answer}, indent=1), file=sys.stderr)
        return 1
    timings = answer.get("timings", {})
    print(f"answer from {answer['decode_worker']} (emulated FPGA), ttft {timings.get('ttft_s', 0):.3f} s: "
          f"{answer['text']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
