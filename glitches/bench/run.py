"""One benchmark from plain arguments: build requests, send them, summarise."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from glitches.bench.load import run_load
from glitches.bench.power import device_power
from glitches.bench.prompts import fixed_length_requests, jsonl_requests, load_tokenizer_for
from glitches.bench.records import RequestResult
from glitches.bench.stats import summarise
from glitches.bench.trace import trace_requests, write_result_trace
from glitches.client import Client


@dataclass(frozen=True)
class BenchConfig:
    address: str
    input_tokens: int | None = None  # with output_tokens: fixed lengths
    output_tokens: int | None = None
    prompts_path: str | None = None  # or a JSONL file of {"prompt", "max_tokens"}
    num_requests: int | None = None  # None: 100 for fixed lengths, the file's length for a JSONL file
    request_rate: float | None = None  # Poisson, requests/s
    concurrency: int | None = None  # closed loop
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    seed: int = 0
    progress: bool = True
    trace_path: str | None = None  # a trace file (glitches/sim/plan_workload.py): arrival times and lengths
    trace_out: str | None = None  # write what was sent and produced as a trace file here

    def load_label(self) -> str:
        if self.trace_path is not None:
            return f"trace {self.trace_path}"
        if self.request_rate is not None:
            return f"Poisson {self.request_rate} req/s"
        return f"closed loop x{self.concurrency}" if self.concurrency is not None else "all at once"


def run_bench(config: BenchConfig) -> tuple[dict, list[RequestResult]]:
    """Returns (the report dict of glitches.bench.stats plus "inputs", every request's result)."""
    fixed = config.input_tokens is not None or config.output_tokens is not None
    if config.trace_path is not None and (fixed or config.prompts_path is not None):
        raise ValueError("a trace gives the lengths: no --input/--output/--prompts with --trace")
    if config.trace_path is None and fixed == (config.prompts_path is not None):
        raise ValueError("give --input and --output, or --prompts FILE.jsonl (not both)")
    if fixed and (config.input_tokens is None or config.output_tokens is None):
        raise ValueError("--input and --output go together")
    with Client(config.address, timeout_s=30) as client:
        status = client.status()
    devices = {w.worker_id: device_power(w) for w in status.workers if w.healthy}
    arrivals_s = None
    if config.trace_path is not None:
        requests, arrivals_s = trace_requests(load_tokenizer_for(status.model), config.trace_path, config.seed)
    elif fixed:
        tokenizer = load_tokenizer_for(status.model)
        requests = fixed_length_requests(tokenizer, config.input_tokens, config.output_tokens,
                                         config.num_requests or 100, config.seed)
    else:
        requests = jsonl_requests(config.prompts_path, config.num_requests)
    results = asyncio.run(run_load(config.address, requests, config.request_rate, config.concurrency,
                                   config.seed, config.progress, arrivals_s))
    if config.trace_out:
        write_result_trace(results, config.trace_out, requests)
    report = summarise(results, devices, config.slo_ttft_s, config.slo_tpot_s)
    report["inputs"] = {
        "address": config.address, "model": status.model, "input_tokens": config.input_tokens,
        "output_tokens": config.output_tokens, "prompts": config.prompts_path, "load": config.load_label(),
        "request_rate": config.request_rate, "concurrency": config.concurrency, "seed": config.seed,
        "note": "greedy decoding stops at EOS: the scheduler cannot ignore EOS, so output counts are what was "
                "produced (see output_tokens vs requested_output_tokens)",
    }  # fmt: skip
    report["errors"] = sorted({r.error for r in results if r.error})[:5]
    return report, results
