"""Is the same command's answer the same twice? Two back-to-back `analyze --quick` runs of one profile.

Runs `rwkvprobe analyze PROFILE --quick` twice in a row (each in its own process, its own output
folder), then prints, for every series both runs measured, the decode ms/token of each run and their
ratio, and whether the verdict (the main bound of the fastest series, and which series that is, or one the other
run named tied within noise with its own) is the same. Target (issue 14): every ratio within 10% (0.91..1.10), the same verdict. It prints the range of each
run's DRAM bandwidth probes too: where the machine's own bandwidth moved between the runs, the bandwidth-bound
series moved with it; and every decode point of run 2 against the same point of run 1: a shift of the machine
moves nearly all of them one way; and how far the large points moved apart from that shift, split by how long
each was timed.

    python bench/repeatability.py [profiles/rwkv-0b4.yaml] [--pairs N] [-- extra analyze options]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from rwkvprobe.measure import contention  # noqa: E402
from rwkvprobe.measure.bandwidth import read_probes, sustained_read_gbps  # noqa: E402
from rwkvprobe.report.markdown import tied_with  # noqa: E402
from rwkvprobe.verdict.roofline import best_series, main_bound, verdict_of  # noqa: E402

TARGET = 0.10
#: point_noise's split of the points by how long each was timed (seconds, the shorter of the two runs)
LONG_TIMING = 0.1


def one_run(profile: Path, out: Path, extra: list[str]) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "rwkvprobe", "analyze", str(profile), "--quick", "--out", str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"analyze failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads((out / "results.json").read_text()), wall


def decode(results: dict) -> tuple[dict[str, float], str, str, str, list[str]]:
    """Each series' decode seconds a token, the fastest series, its bound, its split by bound, the series tied with
    it (the report's "tied within noise with ...")."""
    _, verdict = verdict_of(results)
    per = {f"{s['backend']} {s['dtype']}": s["model"]["decode"]["seconds_per_token"]
           for s in verdict["series"] if s["model"].get("decode")}
    best = best_series(verdict["series"])
    bounds = best["model"]["decode"]["share_by_bound"]
    main = main_bound(bounds) or "mixed"
    split = ", ".join(f"{k} {v:.0%}" for k, v in sorted(bounds.items(), key=lambda kv: -kv[1]) if v >= 0.005)
    return per, f"{best['backend']} {best['dtype']}", main, split, tied_with(best, verdict["series"], results)


def point_ratios(r1: dict, r2: dict) -> list[tuple[float, float, float]]:
    """(run 2 / run 1 median, weight bytes, the shorter of the two timings' seconds) of every decode point (M = 1)
    both runs timed."""
    def timed(r: dict) -> dict:
        return {(p["backend"], p["dtype"], p["k"], p["n"]): p for p in r["measurements"]
                if p["m"] == 1 and (p.get("timing") or {}).get("median_seconds") and (p.get("check") or {}).get("ok")}

    def seconds(p: dict) -> float:
        return (p.get("overhead_seconds") or {}).get("timing", 0.0)
    a, b = timed(r1), timed(r2)
    return [(b[key]["timing"]["median_seconds"] / a[key]["timing"]["median_seconds"],
             key[2] * key[3] * (a[key].get("bytes_per_weight") or 4), min(seconds(a[key]), seconds(b[key])))
            for key in a if key in b]


def point_noise(ratios: list[tuple[float, float, float]], shift: float) -> str:
    """How far the points over 1 MiB of weights moved apart from the common shift (median |ratio / shift - 1|),
    those timed for LONG_TIMING seconds or more against the rest: where a longer timing moves as far, the noise comes
    in phases longer than a point (seconds), and a larger budget per point would not make the runs agree."""
    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):.1%} ({len(xs)})" if xs else "none"
    large = [(abs(x / shift - 1), t) for x, nbytes, t in ratios if nbytes > 2**20]
    return (f"points over 1 MiB, |point over the common shift - 1|: median {med([d for d, _ in large])}; "
            f"timed {LONG_TIMING} s or more {med([d for d, t in large if t >= LONG_TIMING])}, shorter "
            f"{med([d for d, t in large if t < LONG_TIMING])}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", nargs="?", default=str(ROOT / "profiles" / "rwkv-0b4.yaml"))
    ap.add_argument("--pairs", type=int, default=1, help="pairs of runs, one after the other (default 1)")
    ap.epilog = "options after -- are passed to analyze"
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = ap.parse_args(argv[:cut]), argv[cut + 1:]
    outcomes = []
    for i in range(args.pairs):
        if args.pairs > 1:
            print(f"\n== pair {i + 1} of {args.pairs}")
        outcomes.append(one_pair(Path(args.profile), extra))
    if args.pairs > 1:
        # over the pairs: how often the target held, and how much of each pair's largest deviation was the machine
        # moving every point (the common shift) and how much one series moving alone (over that shift)
        print(f"\n{args.pairs} pairs: largest deviation " + ", ".join(f"{o['worst']:.1%}" for o in outcomes)
              + f"; within {TARGET:.0%} in {sum(o['worst'] <= TARGET for o in outcomes)} of {args.pairs}; the same verdict "
              f"in {sum(o['same'] for o in outcomes)}; the common shift "
              + ", ".join(f"{o['shift']:.3f}" if o["shift"] else "-" for o in outcomes)
              + "; the furthest series over it " + ", ".join(f"{o['own']:+.1%}" if o["own"] is not None else "-"
                                                             for o in outcomes))
    return 0 if all(o["same"] and o["worst"] <= TARGET for o in outcomes) else 1


def one_pair(profile: Path, extra: list[str]) -> dict:
    """Two back-to-back runs, compared (printed); their largest deviation (worst), whether the verdict was the same,
    the points' common shift and the furthest series' deviation over it (own)."""
    tmp = Path(tempfile.mkdtemp(prefix="rwkvprobe-repeat-"))
    (r1, w1), (r2, w2) = (one_run(profile, tmp / f"run{i}", extra) for i in (1, 2))
    d1, best1, bound1, split1, ties1 = decode(r1)
    d2, best2, bound2, split2, ties2 = decode(r2)
    print(f"{profile.name}: two back-to-back `analyze --quick` runs ({w1:.0f} s and {w2:.0f} s)")
    print(f"{'series':28s} {'run 1 ms/token':>15s} {'run 2 ms/token':>15s} {'ratio 2/1':>10s}")
    worst = 0.0
    for label in sorted(set(d1) & set(d2)):
        ratio = d2[label] / d1[label]
        worst = max(worst, abs(ratio - 1))
        flag = "" if abs(ratio - 1) <= TARGET else "  <- outside 10%"
        print(f"{label:28s} {d1[label] * 1e3:15.2f} {d2[label] * 1e3:15.2f} {ratio:10.3f}{flag}")
    # the machine's own DRAM bandwidth over each run (every read probe): on a shared host it moves in phases
    # (this VM: 31-62 GB/s within one run), and bandwidth-bound series move with it
    for i, r in ((1, r1), (2, r2)):
        gbps = [g for _, g in read_probes(r, history=False)]
        earlier = [p["read_best_gbps"] for p in (r.get("bandwidth_history") or {}).get("probes", [])]
        if gbps:
            sustained = sustained_read_gbps(r)
            print(f"run {i}: {len(gbps)} bandwidth probes, {min(gbps):.1f}-{max(gbps):.1f} GB/s "
                  f"(max/min {max(gbps) / min(gbps):.2f}), judged at "
                  + (f"the middle probe, {sustained:.1f} GB/s" if sustained else
                     f"the best, {max(gbps + earlier):.1f} GB/s")
                  + (f" (with {len(earlier)} probes of this machine's earlier runs, up to {max(earlier):.1f})"
                     if earlier else ""))
        # the machine's own speed around the points (contention.canary): a series that moved with it moved with
        # the machine, not with the method
        c = contention.summary(r["measurements"], r.get("canary_reference_seconds"))
        if c["canary_sampled"]:
            print(f"run {i}: canary at most {c['canary_max_ratio']:.2f}x its best, {c['machine_slow']} point(s) "
                  f"timed while the machine ran slow, {c['machine_slow_rechecked']} measured again, "
                  f"{c.get('put_off', 0)} put off while it ran slow, {c.get('second_windows', 0)} heavy decode point(s) "
                  "timed in two windows")
    # the machine's mode in each run: on the dev VM the canary (a two-thread matmul) reads 83-88 µs or 125-150, a mode
    # holding for seconds to minutes whatever the process does; a run mostly in the slow one reads every two-thread
    # point slow, a shift no timing inside the run can set apart from the method (the pair's best canary as the scale)
    pair_best = min(filter(None, (contention.canary_best(r["measurements"]) for r in (r1, r2))), default=None)
    slow_share = []
    for i, r in ((1, r1), (2, r2)):
        ratios = [x for p in r["measurements"] if (x := contention.canary_ratio(p, pair_best))]
        if ratios:
            slow_share.append(sum(x >= contention.CANARY_SLOW for x in ratios) / len(ratios))
            print(f"run {i}: canary median {statistics.median(ratios):.2f}x the pair's best; {slow_share[-1]:.0%} of "
                  f"{len(ratios)} points timed in the machine's slow mode ({contention.CANARY_SLOW}x or more)")
    # every point against itself: a shift of the whole machine moves nearly all of them one way, the small ones (whose
    # weights a call reads in a few microseconds) as much as the large ones
    ratios = point_ratios(r1, r2)
    shift, furthest = None, None
    if ratios:
        small = [x for x, nbytes, _ in ratios if nbytes <= 2**20]
        print(f"points: {len(ratios)} decode points timed in both runs, run 2/run 1 median "
              f"{statistics.median(x for x, _, _ in ratios):.2f} ({sum(x > 1 for x, _, _ in ratios)} slower, "
              f"{sum(x < 1 for x, _, _ in ratios)} faster)"
              + (f"; the {len(small)} with at most 1 MiB of weights: median {statistics.median(small):.2f}" if small else ""))
        # each series against that common shift: what the machine moved for all of them set apart from what moved
        # one series alone (a point or a part of it timed in another phase)
        shift = statistics.median(x for x, _, _ in ratios)
        print(point_noise(ratios, shift))
        own = {label: d2[label] / d1[label] / shift for label in set(d1) & set(d2)}
        if own:
            label = max(own, key=lambda k: abs(own[k] - 1))
            furthest = own[label] - 1
            print(f"series over that common shift: {min(own.values()):.3f}-{max(own.values()):.3f}, the furthest "
                  f"{label} ({furthest:+.1%})")
    # the same answer: the same bound, and the same fastest series or one the other run named tied with its own
    same = bound1 == bound2 and (best1 == best2 or best2 in ties1 or best1 in ties2)
    tied1, tied2 = (f" (tied within noise with {', '.join(t)})" if t else "" for t in (ties1, ties2))
    print(f"verdict: run 1 {best1}{tied1} {bound1} ({split1}), run 2 {best2}{tied2} {bound2} ({split2}): "
          f"{'same' if same else 'DIFFERENT'}")
    modes = (f"; the runs' shares of points in the machine's slow mode {slow_share[0]:.0%} and {slow_share[1]:.0%}"
             if len(slow_share) == 2 else "")
    print(f"largest deviation {worst:.1%} (target {TARGET:.0%}){modes}; results in {tmp}")
    return {"worst": worst, "same": same, "shift": shift, "own": furthest}


if __name__ == "__main__":
    sys.exit(main())
