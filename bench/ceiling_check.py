"""Does any report show a figure above its own ceiling without the warning? N `--quick` runs per profile.

For each profile, runs `rwkvprobe analyze PROFILE --quick` N times and checks every series of every
results file: each measured layer's GB/s against the series' bandwidth ceiling, its GFLOP/s against the
compute ceiling, its fraction of roofline, and the model-level weight GB/s, all at most 105%, or else a
ceiling warning that names the layer. Prints one line per run (ceilings raised, the largest figure shown
as a share of its ceiling) and exits 1 on any violation. Issue 14's check: five runs each of rwkv-0b4,
rwkv-1b5 and rwkv4-1b5.

    python bench/ceiling_check.py [--runs 5] [profiles/rwkv-0b4.yaml profiles/rwkv-1b5.yaml ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from rwkvprobe.verdict.roofline import CEILING_TOLERANCE, verdict_of  # noqa: E402

DEFAULT = ["profiles/rwkv-0b4.yaml", "profiles/rwkv-1b5.yaml", "profiles/rwkv4-1b5.yaml"]


def check(results: dict) -> tuple[float, list[str], list[str]]:
    """(largest share of a ceiling shown, the warnings, the violations)."""
    _, verdict = verdict_of(results)
    worst, bad = 0.0, []
    for s in verdict["series"]:
        W, P = s["bandwidth_gbps"], s["peak_gflops"]
        named = {a["layer"] for a in s["ceiling_adjustments"]}
        for r in s["rows"]:
            if not r.get("measured"):
                continue
            for what, share in (("GB/s", r["attained_gbps"] / W), ("GFLOP/s", r["attained_gflops"] / P),
                                ("of roofline", r["roofline_fraction"])):
                worst = max(worst, share)
                if share > CEILING_TOLERANCE and r["layer"] not in named:
                    bad.append(f"{s['backend']} {s['dtype']} {r['layer']} M={r['m']}: {share:.0%} {what}")
        d = s["model"].get("decode")
        if d and d["weight_gbps_attained"] / W > CEILING_TOLERANCE:
            bad.append(f"{s['backend']} {s['dtype']}: decode weight GB/s at {d['weight_gbps_attained'] / W:.0%}")
    return worst, verdict["ceiling_warnings"], bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profiles", nargs="*", default=DEFAULT)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rwkvprobe-ceilings-"))
    failed = 0
    for profile in args.profiles:
        for i in range(args.runs):
            out = tmp / f"{Path(profile).stem}-{i + 1}"
            proc = subprocess.run([sys.executable, "-m", "rwkvprobe", "analyze", profile, "--quick", "--out", str(out)],
                                  cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{profile} run {i + 1}: analyze failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
                failed += 1
                continue
            worst, warnings, bad = check(json.loads((out / "results.json").read_text()))
            print(f"{Path(profile).stem:10s} run {i + 1}: largest shown {worst:.0%} of its ceiling, "
                  f"{len(warnings)} ceiling warning(s){'' if not bad else ', VIOLATIONS: ' + '; '.join(bad)}")
            for w in warnings:
                print(f"    warning: {w}")
            failed += bool(bad)
    print(f"results in {tmp}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
