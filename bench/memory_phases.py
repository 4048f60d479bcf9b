"""How the machine's DRAM speed moves while analyze times its points, and which statistic of several windows repeats.

For SECONDS (default 60), over and over: a two-trial read probe (analyze's ReadProbe), the canary (the fixed
two-thread matmul analyze times beside each point), then eight calls of a 128 MB fp32 GEMV (numpy, two BLAS threads:
a DRAM-bound decode point), and the read probe again. Prints the GEMV's speed range, its correlation with the probe
before it, with the mean of the probes around it and with the canary's speed, how fast it decorrelates (lags), and,
resampling its windows, how often two runs that keep the best of N windows, or their median, agree within 10%.

    python bench/memory_phases.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from rwkvprobe.measure import bandwidth, contention  # noqa: E402

K, N = 4096, 8192  # 128 MB of fp32 weights: four times a 32 MB last-level cache


def corr(x: list[float], y: list[float]) -> float:
    mx, my = statistics.mean(x), statistics.mean(y)
    sx, sy = math.sqrt(sum((v - mx) ** 2 for v in x)), math.sqrt(sum((v - my) ** 2 for v in y))
    return sum((p - mx) * (q - my) for p, q in zip(x, y)) / (sx * sy) if sx and sy else float("nan")


def sample(seconds: float) -> list[tuple[float, float, float, float]]:
    """(probe before GB/s, probe after GB/s, canary seconds, GEMV GB/s: the median of eight calls), in time order."""
    from threadpoolctl import threadpool_limits

    rows = []
    with threadpool_limits(2, user_api="blas"), bandwidth.ReadProbe(2) as reader:
        w = np.random.default_rng(1).random((K, N), dtype=np.float32)
        a, out = np.ones((1, K), np.float32), np.empty((1, N), np.float32)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            before = reader.probe(2)["read_best_gbps"]
            canary = contention.canary()
            calls = []
            for _ in range(8):
                t0 = time.perf_counter()
                np.matmul(a, w, out=out)
                calls.append(time.perf_counter() - t0)
            after = reader.probe(2)["read_best_gbps"]
            rows.append((before, after, canary, K * N * 4 / statistics.median(calls) / 1e9))
    return rows


def agreement(gemv: list[float], windows: int, keep, pairs: int = 2000, seed: int = 1) -> float:
    """Share of resampled run pairs whose kept figure (``keep`` of ``windows`` random windows) agrees within 10%."""
    rng = random.Random(seed)
    ok = 0
    for _ in range(pairs):
        one, two = (keep([rng.choice(gemv) for _ in range(windows)]) for _ in range(2))
        ok += 0.9 <= two / one <= 1.1
    return ok / pairs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    rows = sample(args.seconds)
    if len(rows) < 20:
        print("too few windows to say anything: raise --seconds", file=sys.stderr)
        return 2
    before, after, canary, gemv = (list(x) for x in zip(*rows))
    step = args.seconds / len(rows)
    print(f"{len(rows)} windows, one every {step:.2f} s")
    print(f"GEMV (128 MB fp32, M=1): {min(gemv):.1f}-{max(gemv):.1f} GB/s, median {statistics.median(gemv):.1f}; "
          f"read probe {min(before):.1f}-{max(before):.1f} GB/s")
    print(f"correlation of the GEMV's speed with the probe before it {corr(gemv, before):.2f}, with the probes "
          f"around it {corr(gemv, [(b + c) / 2 for b, c in zip(before, after)]):.2f}, with the canary's speed "
          f"{corr(gemv, [1 / c for c in canary]):.2f}")
    lags = [lag for lag in (1, 5, 20, 50) if len(rows) > lag + 10]
    print("the GEMV's speed against itself later: " + ", ".join(
        f"{lag * step:.1f} s {corr(gemv[:-lag], gemv[lag:]):.2f}" for lag in lags))
    print("two runs agreeing within 10% (resampled windows): " + "; ".join(
        f"{n} window(s): best {agreement(gemv, n, max):.0%}, median {agreement(gemv, n, statistics.median):.0%}"
        for n in (1, 2, 3, 4, 6)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
