"""A host CPU that devices share, for the simulator: processor sharing of its cores among running jobs.

Why. A device whose compute runs on the host's CPU (the CPU stand-in "GPU" worker, an emulated FPGA card,
any device whose step overhead is host code) was profiled alone. When several such devices compute at once
and their threads outnumber the cores, every one of them slows; devices simulated independently miss this.

Model (units: seconds; `cores` in cores, `threads` in threads):
- A job is `work_s` seconds of compute as measured alone, with its `threads` threads busy the whole job.
- T = the threads of all running jobs. Each thread gets min(1, cores / T) of a core, so a job's threads
  run at min(1, cores / T) of full speed. Alone they ran at min(1, cores / threads) (a job with more threads
  than cores was already sharing when it was measured), so a job's work advances at
  rate = min(1, cores / T) / min(1, cores / threads) measured seconds per second: 1 alone, 1 while T <= cores,
  cores / T when T > cores and the job's threads fit the cores.
- Rates change only when a job starts or ends; then every job's remaining work is brought up to date and
  the next completion is scheduled (one timeout; an earlier schedule is dropped by its generation number).
  Jobs whose remaining work is within FINISH_TOLERANCE_S of zero end together (simultaneous completions
  despite float rounding).
Limits: no cache, memory-bandwidth or SMT effects (a shared core gives each thread an equal time slice, no
more no less); threads are busy the whole job (no I/O waits inside it); the serving processes' own CPU (the
scheduler, gRPC, tokenizers) is not counted, only the jobs handed to `run`.
"""

from __future__ import annotations

from dataclasses import dataclass

import simpy

from glitches.services.runtime.errors import InvalidArgument

FINISH_TOLERANCE_S = 1e-9  # measured seconds of work left that count as done (1 ns: float rounding, not work)


@dataclass(eq=False)  # jobs compare by identity
class _Job:
    threads: int
    left_s: float  # measured-alone seconds of work still to do
    done: simpy.Event


class HostCpu:
    """`cores` cores shared by the jobs `run` is given (module docstring)."""

    def __init__(self, env: simpy.Environment, cores: float):
        if not cores > 0:
            raise InvalidArgument(f"host cores must be a positive number, got {cores}")
        self.env = env
        self.cores = float(cores)
        self._jobs: list[_Job] = []
        self._since_s = env.now  # when the jobs' left_s were last brought up to date
        self._generation = 0  # bumps on every reschedule; a timeout of an older generation does nothing

    def run(self, threads: int, work_s: float) -> simpy.Event:
        """An event fired when `work_s` seconds of compute (alone, with `threads` threads) are done."""
        if not isinstance(threads, int) or threads < 1:
            raise InvalidArgument(f"a host CPU job needs >= 1 thread, got {threads!r}")
        if not work_s >= 0:
            raise InvalidArgument(f"a host CPU job's work must be >= 0 s, got {work_s}")
        done = self.env.event()
        if work_s == 0:
            done.succeed()
            return done
        self._advance()
        self._jobs.append(_Job(threads, float(work_s), done))
        self._schedule()
        return done

    @property
    def running_threads(self) -> int:
        return sum(j.threads for j in self._jobs)

    def _rates(self) -> list[float]:
        """Measured seconds of work per second, one per running job."""
        share = min(1.0, self.cores / self.running_threads)
        return [share / min(1.0, self.cores / j.threads) for j in self._jobs]

    def _advance(self) -> None:
        """Take the work done since the last event off every running job (rates were constant since)."""
        elapsed_s = self.env.now - self._since_s
        if elapsed_s > 0 and self._jobs:
            for job, rate in zip(self._jobs, self._rates()):
                job.left_s -= elapsed_s * rate
        self._since_s = self.env.now

    def _schedule(self) -> None:
        self._generation += 1
        if not self._jobs:
            return
        rates = self._rates()
        delay_s, first = min((max(0.0, j.left_s) / r, i) for i, (j, r) in enumerate(zip(self._jobs, rates)))
        generation, target = self._generation, self._jobs[first]
        self.env.timeout(delay_s).callbacks.append(lambda _event: self._finish(generation, target))

    def _finish(self, generation: int, target: _Job) -> None:
        if generation != self._generation:  # a start or an end since rescheduled
            return
        self._advance()
        ended = [j for j in self._jobs if j is target or j.left_s <= FINISH_TOLERANCE_S]
        self._jobs = [j for j in self._jobs if j not in ended]
        for job in ended:
            job.done.succeed()
        self._schedule()


def compute(env: simpy.Environment, host_cpu: HostCpu | None, threads: int, work_s: float):
    """A device's compute of `work_s` measured seconds (a simpy generator: `wall_s = yield from compute(...)`).

    On the shared host CPU when there is one and the device computes on `threads` > 0 of its threads; else a
    plain timeout of `work_s`. Returns the wall seconds it took (`work_s` exactly when not shared)."""
    if host_cpu is None or threads <= 0:
        yield env.timeout(work_s)
        return work_s
    started_s = env.now
    yield host_cpu.run(threads, work_s)
    return env.now - started_s
