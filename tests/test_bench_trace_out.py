"""`glitches bench --trace-out`: every request sent is in the trace, a refused one with what it asked for."""

import json

from glitches.bench.records import BenchRequest, RequestResult
from glitches.bench.trace import write_result_trace


def test_refused_requests_are_written_with_the_tokens_they_asked_for(tmp_path):
    requests = [BenchRequest("a", 16, 64), BenchRequest("b", 16, 64), BenchRequest("c", 8, 0)]
    served = RequestResult(0, 16, start_s=0.5, token_times_s=[0.7, 0.8, 0.9], prompt_tokens=64)
    refused = RequestResult(1, 16, start_s=0.25, error="ResourceExhausted: this scheduler is full")
    unknown = RequestResult(2, 8, start_s=1.0, error="ResourceExhausted: this scheduler is full")  # length unknown
    path = tmp_path / "seen.jsonl"
    write_result_trace([served, refused, unknown], path, requests)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"arrival_s": 0.25, "input_tokens": 64, "output_tokens": 16},  # in send order
                    {"arrival_s": 0.5, "input_tokens": 64, "output_tokens": 3}]  # served: what it produced
