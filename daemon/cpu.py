"""How many CPU threads the model runs on, when the user does not say: one default for `segue generate` and
`segue serve`, so that a take made by either renders the same again with the other.

torch's CPU ops run on OpenMP threads that meet at a barrier after every parallel op, and libgomp's waiting threads
spin before they sleep. When other processes (a DAW, its plug-ins) hold the cores those threads need, a barrier
waits a time slice for the one that was preempted while the spinners burn the rest, and the step collapses instead
of slowing down in proportion. Measured on a 2-core AMD EPYC (bench/cpu_load.py, ms per CFG step with 0 / 1 / 2
other busy processes; two runs, BENCHMARKS.md has the second):

    demo model     1 thread   1.0-1.1 / 1.0 / 1.4-1.8    2 threads   1.0-1.1 / 4.4-4.6 / 5-274
    small, int8    1 thread  26-32 / 26-27 / 37-40       2 threads  22 / 72-118 / 81-93

With OMP_WAIT_POLICY=PASSIVE two threads collapse less (small: 32-35 ms with one busy process) but are slower
than one even on an idle machine (36-49 ms: a futex wake per op). So the model gets half the CPUs this process may
use, at least one: the other half is left to the DAW and the audio. An idle 2-core box gives up about a fifth of
the int8 step's speed for a step that slows down in proportion to the load and never collapses.
`--threads` overrides it, and so does OMP_NUM_THREADS where it is set to a positive number.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as `taskset` or a container sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """Torch CPU threads for the model: OMP_NUM_THREADS where it is a positive number, else half of
    `usable_cpus()`, at least 1 (see the module's docstring)."""
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    return max(1, usable_cpus() // 2)


def oversubscribed(threads: int) -> str | None:
    """A warning when `threads` is more than the CPUs this process may use (their barriers then wait for each other
    at every op), else None."""
    cpus = usable_cpus()
    if threads <= cpus:
        return None
    return (f"{threads} threads for the model, but this process may use {cpus} CPU{'s' if cpus != 1 else ''}: "
            f"each op waits for threads that have no CPU; {default_threads()} is the default here")
