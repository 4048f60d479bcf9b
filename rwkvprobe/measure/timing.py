"""Timing engine: warm-up, then repeats until the spread is small or the time budget is spent.

Each sample is one call, timed with ``time.perf_counter``. Calls rotate over ``copies`` distinct
weight buffers so that, when their total exceeds the last-level cache several times over, every call
reads its weights from DRAM as RWKV decode does (cold cache). Every sample is kept.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

from rwkvprobe.backends import small_pages
from rwkvprobe.errors import InputError

#: A cold call is timed as the real pass runs it: its weights in DRAM, everything else as the op before it left
#: it. The eviction read between calls (STREAM's rule) leaves more than the weights cold: the library's code and
#: state (oneDNN's, for torch bf16) drop out of the caches and its worker threads fall asleep during the read,
#: and a small call then paid for waking them as if it were reading its weights. So after the eviction one untimed
#: call runs on the copy timed last (cold again, not the one timed next). Here, torch with 2 threads, a call's
#: median straight after the eviction / after that call / in the reference forward pass (torch.profiler):
#: bf16 [1,768]x[768,64] 90 / 27 / 28 µs, bf16 768x768 145 / 94 / 98 µs, fp32 [1,32]x[32,768] 28 / 9.6 / 8.5 µs,
#: fp32 768x3072 440 / 440 / 479 µs (a large call's own time hides it).
REWARM = True
#: A point whose relative spread (IQR / median) stays above this after its budget is flagged noisy.
NOISY_SPREAD = 0.10
#: The cold-cache rotation covers at least this many times the last-level cache (STREAM's rule).
LLC_FACTOR = 4
#: Fallback when the cache size cannot be read.
DEFAULT_LLC_BYTES = 32 * 1024**2


@dataclass
class TimingPolicy:
    """How long and how often to measure one point."""

    budget_seconds: float = 1.0  # per point, warm-up included
    min_samples: int = 5
    max_samples: int = 10_000
    target_spread: float = 0.03  # stop when IQR / median falls below this (after min_samples)
    warmup_seconds: float = 0.05
    #: neither the budget nor a small spread ends sampling before this many samples, up to STALL_LIMIT x the budget
    #: or FLOOR_LIMIT_SECONDS, the longer (a point whose median carries much of a decode: its few calls a slow mode
    #: of the machine can make the median; a ggml fp16 head once gave three steady calls of 8.0 ms, where its calls
    #: take 3-4 ms, and stopped on their 1% spread)
    floor_samples: int = 0


def summarize(samples: list[float]) -> dict:
    """min, median, mean, stdev, IQR and relative spread of a list of seconds."""
    s = sorted(samples)
    n = len(s)
    q1, q3 = _quantile(s, 0.25), _quantile(s, 0.75)
    median = statistics.median(s)
    return {
        "n": n,
        "min_seconds": s[0],
        "median_seconds": median,
        "mean_seconds": statistics.fmean(s),
        "stdev_seconds": statistics.stdev(s) if n > 1 else 0.0,
        "q1_seconds": q1,
        "q3_seconds": q3,
        "iqr_seconds": q3 - q1,
        "spread": (q3 - q1) / median if median > 0 else 0.0,
    }


def _median_and_spread(samples: list[float]) -> tuple[float, float]:
    """The median and relative spread (IQR / median) that ``summarize`` gives, without its mean and stdev (the
    sampling loop asks for them every few calls: ``statistics.stdev`` took a second and a half of a quick run)."""
    s = sorted(samples)
    median = _quantile(s, 0.5)
    return median, (_quantile(s, 0.75) - _quantile(s, 0.25)) / median if median > 0 else 0.0


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


#: a call slower than this many times the fastest call of its point is a stall: the timing budget it
#: used is given back (up to the point's budget once more), so that a point whose first calls stall still
#: gets enough samples for its median to be a typical call
STALL_FACTOR = 3.0
#: a point whose steady samples sit above this many times its fastest call keeps sampling for its whole budget
SLOW_MODE = 1.5
#: a point whose samples are mostly stalls keeps sampling, up to this many times its budget
STALL_LIMIT = 4.0
#: a point short of its sample floor (TimingPolicy.floor_samples) keeps sampling past STALL_LIMIT x its budget, up
#: to this many seconds from its start: in a quick run a 0.13 GB ggml fp16 head had a 10 ms budget, whose 4x cap
#: (warm-up included) is five calls in an 8 ms slow mode of the machine, where its calls take 3-4 ms
FLOOR_LIMIT_SECONDS = 1.0


def warming(samples: list[float]) -> int:
    """How many leading samples were still warming up: each slower than SLOW_MODE x the median of the samples
    after it. A 0.5 GB head point gave 18.7, 14.7, 8.3 ms (median 14.7) where its steady calls take 8.3, and
    a ggml one 24.0, 12.3, then 3.8-4.1 ms: with few samples a budget ends on, those first calls were the median."""
    lead = 0
    while len(samples) - lead > 1 and samples[lead] > SLOW_MODE * statistics.median(samples[lead + 1:]):
        lead += 1
    return lead


def cold_call(call: Callable[[int], object], i: int, copies: int, between: Callable[[], object] | None,
              again: bool) -> float:
    """One timed ``call(i)`` as measure() times it: ``between`` (the cache eviction) first, then with ``again`` an
    untimed call on the copy timed last (REWARM), outside the timed region; returns the call's seconds."""
    if between:
        between()
        if again:
            call((i - 1) % copies)
    t0 = time.perf_counter()
    call(i)
    return time.perf_counter() - t0


def measure(call: Callable[[int], object], copies: int = 1, policy: TimingPolicy | None = None,
            between: Callable[[], object] | None = None, rewarm: bool = REWARM) -> dict:
    """Time ``call(i)`` for i rotating over ``copies``; returns the summary plus every sample.

    Warm-up runs every copy once (pages touched, lazy initialisation done) and continues until
    ``warmup_seconds``. Sampling stops at ``max_samples``, when the budget is spent, or when at least
    ``min_samples`` (and one pass over all copies) are in and the spread is below ``target_spread``.
    ``between`` (the cache eviction) runs before every call, outside the timed region; with ``rewarm`` (and
    more than one copy) it is followed by an untimed call on the previous copy (see REWARM).
    """
    p = policy or TimingPolicy()
    clock = time.perf_counter
    start = clock()
    i = 0
    warm_calls = 0
    fastest = math.inf  # the fastest call so far, warm-up included: what a stall is measured against
    warm: list[float] = []
    # the copy timed last, cold again after the eviction and not the one timed next
    again = between is not None and rewarm and copies > 1
    while warm_calls < copies or clock() - start < p.warmup_seconds:
        warm.append(cold_call(call, i, copies, between, again))
        fastest = min(fastest, warm[-1])
        i = (i + 1) % copies
        warm_calls += 1
        if clock() - start > p.budget_seconds / 2:
            break
    samples: list[float] = []
    need = max(p.min_samples, copies)
    floored = not p.floor_samples

    # time the calls so far spent beyond STALL_FACTOR x the fastest, judged against the fastest known now (early
    # stalls count once a fast call shows what they were); recomputed only when the fastest call changes
    stall = sum(x - STALL_FACTOR * fastest for x in warm if x > STALL_FACTOR * fastest)
    while len(samples) < p.max_samples:
        dt = cold_call(call, i, copies, between, again)
        samples.append(dt)
        if dt < fastest:
            fastest = dt
            stall = sum(x - STALL_FACTOR * fastest for x in warm + samples if x > STALL_FACTOR * fastest)
        elif dt > STALL_FACTOR * fastest:
            stall += dt - STALL_FACTOR * fastest
        i = (i + 1) % copies
        n = len(samples)
        # the samples kept (warming ones count as warm-up) reach the floor; once reached, it stays reached
        floored = floored or (n >= p.floor_samples and n - warming(samples) >= p.floor_samples)
        if n >= need and floored and (n % max(1, min(copies, 8)) == 0 or n == need):
            median, spread = _median_and_spread(samples)
            # steady but slow (a median well above the fastest call seen, warm-up included: a worker thread that
            # sleeps through the calls) is a mode, not the point's time: it does not end sampling early
            if spread <= p.target_spread and median <= SLOW_MODE * fastest:
                break
        # stalls (a thread woken a scheduler tick late) spend no budget: a point runs up to 2x its budget; and
        # it does not stop while stalls are most of its samples (a median that is a stall is not the point's
        # time: a ggml point once gave 14.6 ms for a 0.13 ms call), up to STALL_LIMIT x its budget
        # nor while its first samples were still warming up and too few steady ones follow them, nor while it is
        # leaving a slow mode (its last call SLOW_MODE x faster than its median: a ggml head ran 8 ms a call, two of
        # its threads' work on one CPU, for five calls, then 4 ms, when its budget ended on a median of 7.7 ms)
        elapsed = clock() - start
        if elapsed - min(stall, p.budget_seconds) >= p.budget_seconds and n >= min(need, 3):
            clean = sum(1 for x in samples if x <= STALL_FACTOR * fastest)
            steady = n - warming(samples) >= min(need, 3)
            leaving = SLOW_MODE * samples[-1] < statistics.median(samples)
            limit = STALL_LIMIT * p.budget_seconds if floored else max(STALL_LIMIT * p.budget_seconds,
                                                                         FLOOR_LIMIT_SECONDS)
            if (2 * clean > n and steady and not leaving and floored) or elapsed >= limit:
                break
    # samples still warming up count as warm-up (as long as three samples remain)
    lead = min(warming(samples), max(0, len(samples) - 3))
    warm_calls += lead
    samples = samples[lead:]
    stalled = sum(1 for x in samples if x > STALL_FACTOR * fastest)
    out = summarize(samples)
    out["noisy"] = out["spread"] > NOISY_SPREAD
    out["stalled"] = stalled
    out["samples"] = samples
    out["warmup_calls"] = warm_calls
    out["warming"] = lead  # of them, samples that were still warming up (warming)
    out["copies"] = copies
    out["rewarm"] = again  # each eviction followed by an untimed call on the copy timed last (REWARM)
    return out


#: At most this many weight buffers; small weights make up the rest of the cold traffic by an
#: untimed read of an eviction buffer between calls.
MAX_COPIES = 16


@dataclass(frozen=True)
class Rotation:
    """Cold-cache plan: ``copies`` weight buffers, and ``flush_bytes`` read (untimed) before each call.

    Between two uses of the same buffer, copies x (weight + flush) bytes pass through the cache, at
    least LLC_FACTOR x the last-level cache: every call finds its weight in DRAM, as decode does.
    """

    copies: int
    flush_bytes: int
    cold: bool

    def describe(self) -> dict:
        return {"copies": self.copies, "flush_bytes": self.flush_bytes, "cold": self.cold}


def plan_rotation(weight_bytes: float, llc_bytes: int | None, cold: bool = True,
                  max_rotation_bytes: float = 768e6, max_copies: int = MAX_COPIES) -> Rotation:
    """How many distinct weight buffers (and how much eviction traffic) make every call cold.

    Warm: one buffer, reused, no eviction (the cache-resident case).
    """
    if not cold or weight_bytes <= 0:
        return Rotation(1, 0, False)
    need = LLC_FACTOR * (llc_bytes or DEFAULT_LLC_BYTES)
    cap = max(1, int(max_rotation_bytes // weight_bytes))
    copies = max(1, min(math.ceil(need / weight_bytes), cap, max_copies))
    flush = max(0, math.ceil((need - copies * weight_bytes) / copies))
    return Rotation(copies, int(flush), True)


#: the eviction reads' one buffer (grown when a larger read is asked for): a fresh one per point cost 0.16 s a point
#: of first touches on a VM whose fresh pages come at 2.5 s a GB (11.6 of a quick run's 54 s)
_EVICTION_BUFFER: list = []


def eviction(flush_bytes: int) -> Callable[[], object] | None:
    """An untimed call that streams ``flush_bytes`` through the cache (None when nothing to flush): a read of the
    first ``flush_bytes`` of one buffer that every eviction read of this process shares."""
    if flush_bytes <= 0:
        return None
    import numpy as np

    n = max(1, flush_bytes // 8)
    if not _EVICTION_BUFFER or _EVICTION_BUFFER[0].size < n:
        _EVICTION_BUFFER[:] = []
        with small_pages():  # a smaller one freed here leaves heap memory the weights may be given next
            _EVICTION_BUFFER[:] = [np.ones(n, dtype=np.float64)]
    return _EVICTION_BUFFER[0][:n].sum


# ------------------------------------------------------------------------------------------------
# Threads and CPU affinity


def set_affinity(cpus: list[int] | None) -> list[int] | None:
    """Pin every thread of this process (existing BLAS pools included) to ``cpus``; None: leave as is.

    Returns the CPUs the process may run on afterwards (None where affinity is not supported).
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    if cpus:
        tids = []
        try:
            tids = [int(t) for t in os.listdir("/proc/self/task")]
        except OSError:
            pass
        try:
            os.sched_setaffinity(0, cpus)
            for tid in tids:
                try:
                    os.sched_setaffinity(tid, cpus)
                except OSError:
                    pass  # a thread that ended meanwhile
        except OSError as e:
            raise InputError(f"cannot pin to CPUs {cpus}: {e.strerror or e}") from None
    return sorted(os.sched_getaffinity(0))


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
