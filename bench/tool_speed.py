"""How long rwkvprobe itself takes, and its peak memory: the analyze speed targets.

Runs each command in a child process and prints wall time and peak resident memory (the child's
ru_maxrss). Targets (issue 14): `analyze profiles/rwkv-1b5.yaml --quick` at most 45 s of wall time and
the default run at most 120 s, peak memory under 2.5 GB, on a 2-core machine.

    python bench/tool_speed.py            # quick and default runs of rwkv-1b5
    python bench/tool_speed.py --quick    # the quick run only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing (machine_state reads the run)
TARGETS = {"quick": 45.0, "default": 120.0}
MEMORY_TARGET_GB = 2.5


def run(label: str, extra: list[str]) -> tuple[float, float, int, Path]:
    out = Path(tempfile.mkdtemp(prefix=f"rwkvprobe-speed-{label}-"))
    cmd = [sys.executable, "-m", "rwkvprobe", "analyze", str(ROOT / "profiles" / "rwkv-1b5.yaml"),
           "--out", str(out / "run"), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    # ru_maxrss of finished children: the largest of them (kB on Linux); each run is measured alone
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
    return wall, peak_gb, proc.returncode, out / "run" / "results.json"


def machine_state(path: Path) -> str:
    """The run's own account of where its time went and how fast the machine ran (its results file)."""
    from rwkvprobe.measure import contention

    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    stages = ", ".join(f"{k} {v:.1f}" for k, v in r.get("stage_seconds", {}).items() if v >= 0.5)
    costs = {"prepare": 0.0, "check": 0.0, "timing": 0.0}
    for p in r.get("measurements", []):
        for k, v in (p.get("overhead_seconds") or {}).items():
            costs[k] = costs.get(k, 0.0) + v
    before = r.get("before_run_seconds")  # the command's start to the run's (imports), where the budget counts it
    line = (f"    in the run: {r.get('elapsed_seconds', 0):.1f} s"
            + (f", {before:.1f} s before it" if before is not None else "")
            + f" of a {r['settings']['budget_seconds']:.0f} s budget ({stages}); its layer points' preparing "
            f"{costs['prepare']:.1f} s, checking {costs['check']:.1f} s, timing {costs['timing']:.1f} s")
    speed = contention.machine_speed(r)
    if speed:  # the canary (a fixed two-thread matmul timed beside each point) against the machine's earlier runs
        line += (f"\n    the machine ran {speed['ratio']:.2f}x its best (canary median {speed['median_seconds'] * 1e6:.0f} "
                 f"µs against {speed['best_seconds'] * 1e6:.0f} over {speed['earlier_runs']} earlier runs)")
    return line


RUNS = {"quick": ["--quick"], "default": []}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the --quick run")
    ap.add_argument("--one", choices=list(RUNS), help=argparse.SUPPRESS)  # internal: one run, one process
    args = ap.parse_args()
    if args.one:  # measured in its own process: RUSAGE_CHILDREN is the peak of this run alone
        wall, peak, rc, results = run(args.one, RUNS[args.one])
        ok = rc == 0 and wall <= TARGETS[args.one] and peak <= MEMORY_TARGET_GB
        print(f"{args.one:8s} {wall:8.1f} {TARGETS[args.one]:9.0f} {peak:8.2f} {MEMORY_TARGET_GB:10.1f}  {rc}"
              f"{'' if ok else '  <- misses its target'}", flush=True)
        state = machine_state(results)
        if state:
            print(state, flush=True)
        return 0 if ok else 1
    print(f"{'run':8s} {'wall s':>8s} {'target s':>9s} {'peak GB':>8s} {'target GB':>10s}  exit", flush=True)
    labels = ["quick"] if args.quick else list(RUNS)
    failed = [subprocess.call([sys.executable, __file__, "--one", label]) for label in labels]
    print(f"machine: {os.cpu_count()} CPUs; other load on the machine slows these figures")
    return 1 if any(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
