"""Was the machine busy with something else while a point was timed? CPU steal and other processes.

Sampled with psutil around each measurement: the machine's busy CPU time (all processes) minus this
process's own (threads and waited-for children included) is what other processes took; ``steal`` is
what the hypervisor gave to other guests (Linux, VMs). Both are counted in CPU-seconds and as a share
of the machine's CPU capacity over the interval. A share at or above ``CONTENDED_SHARE`` marks the
interval as contended: on a memory-bound measurement any other busy process competes for the same
DRAM bandwidth, so the share of the whole machine is what counts, not only of the pinned CPUs.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass

import psutil

#: Other processes' CPU time plus steal, as a share of the machine's CPU capacity, that marks a
#: measurement as contended (10%: one busy core out of ten, or a fifth of one core on two).
CONTENDED_SHARE = 0.10
#: /proc/stat counts in ticks of 10 ms; below this many CPU-seconds nothing is told apart from rounding.
MIN_CPU_SECONDS = 0.03
#: Shares are taken over at least this long a window: over a shorter one, tick rounding alone would
#: read as tens of percent (a point timed for 20 ms would seem contended by a single tick).
MIN_WINDOW_SECONDS = 0.25


@dataclass(frozen=True)
class Sample:
    wall: float
    busy: float  # all processes, CPU-seconds since boot (steal and idle excluded)
    steal: float
    own: float  # this process, CPU-seconds (threads and reaped children)
    cpus: int


def sample() -> Sample:
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    p = psutil.Process().cpu_times()
    own = p.user + p.system + getattr(p, "children_user", 0.0) + getattr(p, "children_system", 0.0)
    return Sample(time.monotonic(), busy, getattr(t, "steal", 0.0), own, psutil.cpu_count() or 1)


def between(a: Sample, b: Sample, threshold: float = CONTENDED_SHARE) -> dict:
    """What others took of the machine between two samples (JSON-ready)."""
    wall = max(b.wall - a.wall, 1e-9)
    capacity = max(wall, MIN_WINDOW_SECONDS) * a.cpus
    other = max(0.0, (b.busy - a.busy) - (b.own - a.own))
    steal = max(0.0, b.steal - a.steal)
    taken = other + steal
    share = taken / capacity
    return {"wall_seconds": wall, "cpus": a.cpus, "other_cpu_seconds": other, "steal_cpu_seconds": steal,
            "other_share": other / capacity, "steal_share": steal / capacity,
            "contended": taken >= MIN_CPU_SECONDS and share >= threshold}


#: The machine's own speed, timed around every point: a fixed cache-resident fp32 matmul (CANARY_N cubed, on numpy's
#: BLAS threads), the best of CANARY_CALLS calls, well under a millisecond. A shared host's CPUs slow down in phases
#: that neither steal nor other processes show (another guest busy on the same cores): on this project's 2-vCPU VM
#: it took 84-88 µs most of the time and 137-180 µs for seconds at a time, and a GEMV or a 512-cubed matmul timed
#: while it was over 1.2x its best ran 1.3-1.4x slower. In two quick runs its slow phases (1.6-1.8x, 5-7 s) were
#: the phases in which the DRAM read probes burst to 64-66 GB/s (34-41 otherwise): compute and bandwidth move
#: together, in opposite directions.
CANARY_N = 192
CANARY_CALLS = 5
#: a point whose canary ran this many times the run's best was timed while the machine was slow
CANARY_SLOW = 1.25


@functools.cache
def _canary_operands():
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.random((CANARY_N, CANARY_N), dtype=np.float32), rng.random((CANARY_N, CANARY_N), dtype=np.float32)


def _best_of(call) -> float:
    """Seconds of ``call()``: the best of CANARY_CALLS calls."""
    best = float("inf")
    for _ in range(CANARY_CALLS):
        t = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t)
    return best


def canary() -> float:
    """Seconds of the canary matmul: the best of CANARY_CALLS calls."""
    a, b = _canary_operands()
    return _best_of(lambda: a @ b)


def torch_canary() -> float:
    """The canary's matmul in torch, on torch's own threads, the best of CANARY_CALLS calls: for timing beside
    torch work (a layer pass's rounds, the real pass's tokens), where canary() would wake numpy's BLAS workers,
    which spin on for about 0.1 s after a call: on 2 vCPUs a torch token timed right after it took 61 ms against
    42 (RWKV-4 169M, fp32). Like canary(), it runs slow in the machine's slow phases, which are phases of
    two-thread work: over a minute of this project's VM its ratio to its best followed canary()'s (correlation
    0.67), where the same matmul on one thread stayed within 1.12x of its best in 90% of the samples (0.05)."""
    import torch

    a, b = (torch.from_numpy(x) for x in _canary_operands())
    return _best_of(lambda: torch.mm(a, b))


def slow_now(best: float | None) -> float | None:
    """The canary timed now over ``best``, where that is CANARY_SLOW or more (the machine runs slow now); else
    None (and None without a ``best`` to compare with)."""
    if not best:
        return None
    ratio = canary() / best
    return ratio if ratio >= CANARY_SLOW else None


def canary_ratio(point: dict, best: float | None) -> float | None:
    """How many times the run's best canary the canary ran around ``point`` (None: not recorded)."""
    seconds = (point.get("contention") or {}).get("canary_seconds")
    return seconds / best if seconds and best else None


def point_canaries(points: list[dict]) -> list[float]:
    """The canary seconds recorded beside ``points`` (those that carry one), in their order."""
    return [x for p in points if (x := (p.get("contention") or {}).get("canary_seconds"))]


def canary_best(points: list[dict], reference: float | None = None) -> float | None:
    """The run's best canary: its reference (timed as the points began) and every point's."""
    seen = point_canaries(points)
    if reference:
        seen.append(reference)
    return min(seen) if seen else None


def run_canary(results: dict) -> dict | None:
    """The run's canary for the machine's history (history.record): its best (the reference as the points began
    and every point's) and the median of its points', at the first point's time; None without timed points."""
    points = [p for p in results.get("measurements") or [] if (p.get("contention") or {}).get("canary_seconds")]
    best = canary_best(points, results.get("canary_reference_seconds"))
    at = next((p["at"] for p in points if isinstance(p.get("at"), (int, float))), None)
    if not points or best is None or at is None:
        return None
    return {"at": at, "best_seconds": best, "median_seconds": statistics.median(point_canaries(points))}


def machine_speed(results: dict) -> dict | None:
    """This run's canary against the machine's earlier runs (results["canary_history"]): the median around its points
    (``median_seconds``), the best of the earlier runs and this one (``best_seconds``), their ratio and how many
    earlier runs count; None without that history or without points timed beside the canary. A ratio of CANARY_SLOW
    or more: most of the run was timed while the machine ran slow, a phase the run's own best cannot show when it
    lasted the whole run."""
    runs = (results.get("canary_history") or {}).get("runs") or []
    measurements = results.get("measurements") or []
    points = point_canaries(measurements)
    earlier = [r["best_seconds"] for r in runs if r.get("best_seconds")]
    own = canary_best(measurements, results.get("canary_reference_seconds"))
    if not earlier or not points or own is None:
        return None
    best = min(earlier + [own])
    median = statistics.median(points)
    return {"median_seconds": median, "best_seconds": best, "ratio": median / best, "earlier_runs": len(earlier)}


#: analyze measures a point again when it is slower than this many times its series' ceilings predict (a
#: kernel-limited layer sits well within it: the series' own peak and GEMV rate carry a slow kernel's speed)
SLOW_POINT_FACTOR = 10.0


def summary(points: list[dict], canary_reference: float | None = None) -> dict:
    """Counts for the report's stability line, over points that carry a ``contention`` record."""
    sampled = [p for p in points if p.get("contention")]
    best = canary_best(sampled, canary_reference)
    ratios = [r for p in sampled if (r := canary_ratio(p, best))]
    contended = [p for p in sampled if p["contention"]["contended"]]
    remeasured = [p for p in sampled if p.get("remeasured") is not None]
    shares = [p["contention"]["other_share"] + p["contention"]["steal_share"] for p in sampled]
    steal = [p["contention"]["steal_share"] for p in sampled]
    return {"sampled": len(sampled), "contended": len(contended), "remeasured": len(remeasured),
            "slow_rechecked": sum(1 for p in points if p.get("slow_recheck")),
            "near_line_rechecked": sum(1 for p in points if p.get("near_line_recheck")),
            "heavy_rechecked": sum(1 for p in points if p.get("heavy_recheck")),
            "series_heavy_rechecked": sum(1 for p in points if p.get("series_heavy_recheck")),
            "second_windows": sum(1 for p in points if p.get("second_window")),
            # the machine's speed around the points (the canary): how often and how far it ran slow
            "canary_sampled": len(ratios), "canary_max_ratio": max(ratios, default=None),
            "machine_slow": sum(1 for r in ratios if r >= CANARY_SLOW),
            "machine_slow_rechecked": sum(1 for p in points if p.get("machine_slow_recheck") is not None),
            "put_off": sum(1 for p in points if p.get("put_off")),
            "max_share": max(shares, default=0.0), "max_steal_share": max(steal, default=0.0),
            "contended_points": [f"{p['backend']} {p['dtype']} M={p['m']} {p['k']}x{p['n']}" for p in contended]}
