"""Send the requests to a live cluster: Poisson arrivals, all at once, or a closed loop."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from glitches.aio import AsyncClient
from glitches.bench.records import BenchRequest, RequestResult
from glitches.errors import GlitchesError
from glitches.types import Completion


async def _one(client: AsyncClient, index: int, request: BenchRequest, t0: float) -> RequestResult:
    result = RequestResult(index, request.max_tokens, start_s=time.perf_counter() - t0)
    try:
        async for item in client.stream(request.prompt, max_tokens=request.max_tokens):
            now_s = time.perf_counter() - t0
            if isinstance(item, Completion):
                result.prompt_tokens = item.prompt_tokens
                result.finish_reason = item.finish_reason
                result.prefill_worker, result.decode_worker = item.prefill_worker, item.decode_worker
                result.decode_device = item.decode_device
                result.timings = item.timings
            else:
                result.token_times_s.extend([now_s] * len(item.token_ids))
    except GlitchesError as error:
        result.error = f"{type(error).__name__}: {error}"
    return result


async def run_load(address: str, requests: Sequence[BenchRequest], request_rate: float | None = None,
                   concurrency: int | None = None, seed: int = 0, progress: bool = True,
                   arrivals_s: Sequence[float] | None = None) -> list[RequestResult]:
    """Run every request; returns results in request order.

    request_rate: Poisson arrivals at this many requests/s (open loop); concurrency: that many
    clients, each sending its next request when its last one ends (closed loop); arrivals_s: each
    request sent at its own time, seconds from the start (a trace, in request order); none: all at once.
    """
    if arrivals_s is not None and (request_rate is not None or concurrency is not None):
        raise ValueError("a trace sets the arrival times: give no request rate or concurrency with it")
    if request_rate is not None and concurrency is not None:
        raise ValueError("give a request rate or a concurrency, not both")
    if request_rate is not None and request_rate <= 0:
        raise ValueError(f"request rate must be positive requests/s, got {request_rate}")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    bar = tqdm(total=len(requests), desc="requests", unit="req", file=sys.stderr, disable=not progress)
    results: list[RequestResult | None] = [None] * len(requests)

    async def tracked(client, index, t0):
        results[index] = await _one(client, index, requests[index], t0)
        bar.update(1)

    async with AsyncClient(address) as client:
        t0 = time.perf_counter()
        if concurrency is not None:
            queue = list(range(len(requests)))[::-1]

            async def worker():
                while queue:
                    await tracked(client, queue.pop(), t0)

            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
        else:
            if arrivals_s is not None:  # a trace: the gaps between its (sorted) arrival times
                order = np.argsort(arrivals_s, kind="stable")
                if list(order) != list(range(len(requests))):
                    raise ValueError("a trace's arrival times must be in non-decreasing order")
                gaps_s = np.diff(np.asarray(arrivals_s, dtype=float), prepend=0.0)
            else:
                gaps_s = (np.random.default_rng(seed).exponential(1.0 / request_rate, size=len(requests))
                          if request_rate is not None else np.zeros(len(requests)))
            tasks = []
            for index, gap_s in enumerate(gaps_s):
                if gap_s > 0:
                    await asyncio.sleep(float(gap_s))
                tasks.append(asyncio.create_task(tracked(client, index, t0)))
            await asyncio.gather(*tasks)
    bar.close()
    return results  # type: ignore[return-value]
