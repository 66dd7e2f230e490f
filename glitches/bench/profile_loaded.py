"""`glitches profile`, loaded phase: closed loops that make the GPU worker run the steps a busy cluster runs.

Protocol. For each concurrency `c` of ProfileConfig.loaded_concurrency, `c` clients each send requests of
`max_tokens` tokens (ignore_eos) back to back until `c x rounds` requests have finished, each with a prompt
of its own (`new_prompt()`): a prompt sent twice would hit the GPU's prefix cache and leave its prefill
mostly uncomputed, steps a workload of distinct prompts never runs. Nothing here is timed on the client:
the point is the GPU worker's own step log (glitches/bench/profile_steplog.py), which records every step
these loops cause, with its composition and seconds: several prompts prefilled in one step, prefill chunks
joined by decode rows (the mixed steps), and decode batches as wide as the concurrency. A profile measured one request at a time has none of
these, so the step model (glitches/sim/step_model.py) would extrapolate to them; with this phase it is
fitted to them. On a cluster with FPGAs the loops fill the cards first and then GPU assist, as a live
closed loop does (so the GPU's steps are then timed beside busy cards; see docs/sim_profile_format.md,
host_cores, for measuring a shared host's devices alone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from glitches.aio import AsyncClient


async def run_closed_loops(client: AsyncClient, new_prompt: Callable[[], str], concurrencies: tuple[int, ...],
                           max_tokens: int, rounds: int = 2) -> int:
    """Run one closed loop per concurrency, a new prompt per request; returns the requests completed."""
    done = 0
    for concurrency in concurrencies:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for _ in range(concurrency * rounds):
            queue.put_nowait(new_prompt())

        async def client_loop() -> int:
            finished = 0
            while not queue.empty():
                prompt = queue.get_nowait()
                await client.generate(prompt, max_tokens=max_tokens, ignore_eos=True)
                finished += 1
            return finished

        done += sum(await asyncio.gather(*(client_loop() for _ in range(concurrency))))
    return done
