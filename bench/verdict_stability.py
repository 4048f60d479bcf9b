"""Does the same command give the same verdict? Every stored run's verdicts, counted.

Reads results.json files (paths, folders searched for them, or shell patterns), rebuilds each run's verdict from
the file alone (as `rwkvprobe report` does) and prints, per profile: the headline (the fastest series and the bound
it is called by) in how many runs, and for every series the bound its decode is called by (roofline.main_bound:
"mixed" where no bound leads by LEAD) in how many runs, with the share of the runs that agree with the most common
one. A series whose count splits is a verdict that flips between runs of the same command: the method, not the
machine, is wrong (issue 14). No run is made: it reads what earlier runs left, so that a change to the verdict's
method can be judged over a hundred runs without timing one.

    python bench/verdict_stability.py /tmp/rwkvprobe-repeat-* /tmp/rwkvprobe-ceilings-*
    python bench/verdict_stability.py rwkvprobe-out --profile "RWKV-7 0.4B"
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from rwkvprobe.verdict.roofline import best_series, bound_lead, main_bound, verdict_of  # noqa: E402


def result_files(args: list[str]) -> list[Path]:
    """Every results.json named, under a named folder, or matched by a pattern; each once, in name order."""
    found: set[Path] = set()
    for arg in args:
        for p in map(Path, glob.glob(arg) or [arg]):
            if p.is_dir():
                found.update(p.rglob("results.json"))
            elif p.is_file():
                found.add(p)
    return sorted(found)


def tally(files: list[Path], profile: str | None = None) -> dict[str, dict]:
    """{profile name: {"runs", "headline": Counter, "leads": [...], "series": {label: Counter}}} over the files
    that hold measured layers (others, and files that cannot be read, are skipped)."""
    out: dict[str, dict] = {}
    for path in files:
        try:
            results = json.loads(path.read_text())
            name = results["profile"]["name"]
            if not results.get("measurements") or (profile and name != profile):
                continue
            _, verdict = verdict_of(results)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        t = out.setdefault(name, {"runs": 0, "headline": collections.Counter(), "leads": [],
                                  "series": collections.defaultdict(collections.Counter)})
        t["runs"] += 1
        for s in verdict["series"]:
            decode = s["model"].get("decode")
            if decode and not s.get("whatif"):
                t["series"][f"{s['backend']} {s['dtype']}"][main_bound(decode["share_by_bound"]) or "mixed"] += 1
        best = best_series(verdict["series"])
        if best is not None:
            shares = best["model"]["decode"]["share_by_bound"]
            t["headline"][f"{best['backend']} {best['dtype']}: {main_bound(shares) or 'mixed'}"] += 1
            t["leads"].append(bound_lead(shares))
    return out


def agreement(counts: collections.Counter) -> float:
    """The share of the runs that agree with the most common verdict."""
    return max(counts.values()) / sum(counts.values())


def render(tallies: dict[str, dict]) -> str:
    lines = []
    for name, t in sorted(tallies.items()):
        lines.append(f"{name}: {t['runs']} run(s)")
        heads = ", ".join(f"{k} {n}" for k, n in t["headline"].most_common())
        lines.append(f"  headline: {heads} (agree {agreement(t['headline']):.0%})" if t["headline"] else
                     "  headline: none")
        if t["leads"]:
            spread = statistics.pstdev(t["leads"]) if len(t["leads"]) > 1 else 0.0
            lines.append(f"  headline lead over the next bound: mean {statistics.mean(t['leads']):.2f}, sd {spread:.2f}, "
                         f"least {min(t['leads']):.2f}")
        for label, counts in sorted(t["series"].items(), key=lambda kv: agreement(kv[1])):
            split = ", ".join(f"{k} {n}" for k, n in counts.most_common())
            lines.append(f"  {label:18s} {split} (agree {agreement(counts):.0%})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="results.json files, folders holding them, or patterns")
    ap.add_argument("--profile", help="only runs of this profile (its name, as in the report)")
    args = ap.parse_args(argv)
    tallies = tally(result_files(args.paths), args.profile)
    if not tallies:
        print("no results.json with measured layers found", file=sys.stderr)
        return 2
    print(render(tallies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
