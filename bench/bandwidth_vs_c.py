"""Compare rwkvprobe's numpy bandwidth probe with a compiled C/OpenMP STREAM-style reference.

Builds bench/stream_ref.c with the system C compiler into bench/stream_ref (gitignored), then for
each thread count runs the C reference and the Python probe side by side, same array size, same
trials and same pinned CPUs, alternating which goes first to spread drift over both. Prints, per
thread count and kernel, the best GB/s of each over all rounds and the ratio Python / C, the ratio of
the medians of the per-round bests (steadier on a shared machine), and the spread of the per-round
bests, and the paired median ratio: the median over rounds of Python's best / C's best in the same round. Target:
paired median ratio >= 0.95. The paired figure is the one that holds on a shared host: this VM's bandwidth jumps
between about 36 and 60+ GB/s (two threads) for tens of seconds at a time, so one side's median can come from the
fast phase and the other's from the slow one (0.65-0.74 "median ratio" in a run whose rounds, side by side, read
0.95-1.10); within one round both ran seconds apart.

Where ``-march=native`` compiles (x86-64), a second binary adds ``-mprefer-vector-width=256``: on the Zen 4 dev VM
gcc's default 512-bit loops moved add and triad about 20% slower on one core than 256-bit ones. Each round runs
both; per kernel, C's figures are those of the binary with the higher median over the rounds, so the reference is
the best C here, not one flag set (and, like Python's, one run's best of the trials per round).

    python bench/bandwidth_vs_c.py [--size 128M] [--threads 1,2] [--trials 10] [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from rwkvprobe.measure import bandwidth, system  # noqa: E402

SOURCE = HERE / "stream_ref.c"
BINARY = HERE / "stream_ref"
FLAG_SETS = (["-march=native"], ["-mcpu=native"], [])  # first that compiles wins
WIDE_256 = "-mprefer-vector-width=256"  # x86-64 only: the second binary's extra flag


def _compile(cc: str, flags: list[str], binary: Path) -> str | None:
    """Compile stream_ref.c to ``binary``; None when it worked, else the compiler's last line."""
    proc = subprocess.run([cc, *flags, str(SOURCE), "-o", str(binary), "-lm"], capture_output=True, text=True)
    return None if proc.returncode == 0 else f"{cc} {' '.join(flags)}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}"


def build(cc: str) -> dict[str, list[str]]:
    """Compile stream_ref.c (always: it takes a second, and flags may differ). Returns {binary path: flags}: the first
    flag set that compiles, and where that is ``-march=native``, the same with 256-bit vectors preferred as well."""
    errors = []
    for extra in FLAG_SETS:
        flags = ["-O3", "-fopenmp", *extra]
        error = _compile(cc, flags, BINARY)
        if error is None:
            built = {str(BINARY): flags}
            wide = [*flags, WIDE_256]
            second = BINARY.with_name(BINARY.name + "_256")
            if extra == ["-march=native"] and _compile(cc, wide, second) is None:
                built[str(second)] = wide
            return built
        errors.append(error)
    sys.exit("could not build stream_ref:\n" + "\n".join(errors))


def run_c(binary: str, array_bytes: int, cpus: list[int], trials: int) -> dict:
    """One run of a C reference binary on ``cpus``, one OpenMP thread per CPU, bound like our workers."""
    env = dict(os.environ, OMP_NUM_THREADS=str(len(cpus)), OMP_PROC_BIND="true",
               OMP_PLACES=",".join(f"{{{c}}}" for c in cpus))
    proc = subprocess.run([binary, str(array_bytes), str(trials)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"stream_ref failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return json.loads(proc.stdout)


def run_c_all(binaries: dict[str, list[str]], array_bytes: int, cpus: list[int], trials: int) -> dict[str, dict]:
    """Every C binary once, one after the other: {flags as text: its kernels}."""
    return {" ".join(flags): run_c(binary, array_bytes, cpus, trials)["kernels"] for binary, flags in binaries.items()}


def run_python(array_bytes: int, cpus: list[int], trials: int) -> dict:
    result = bandwidth.measure_bandwidth(array_bytes, threads=[len(cpus)], trials=trials, cpus=cpus)
    run = result["runs"][0]
    if not run["check_ok"]:
        sys.exit("python probe: wrong values in the arrays")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", help="bytes per array (default: rwkvprobe's default, 4x LLC)")
    parser.add_argument("--threads", type=lambda t: [int(x) for x in t.split(",")],
                        help="thread counts, e.g. 1,2 (default: 1 and all CPUs, per cluster)")
    parser.add_argument("--trials", type=int, default=bandwidth.DEFAULT_TRIALS)
    parser.add_argument("--rounds", type=int, default=5, help="C/Python alternations per thread count")
    parser.add_argument("--cc", default=os.environ.get("CC") or shutil.which("cc") or "gcc")
    parser.add_argument("--json", type=Path, help="also write every round's figures to this file")
    args = parser.parse_args(argv)

    binaries = build(args.cc)
    array_bytes = bandwidth.parse_size(args.size) if args.size else bandwidth.default_array_bytes(system.llc_bytes())
    array_bytes -= array_bytes % bandwidth.ITEM_BYTES
    runs = bandwidth.plan_runs(args.threads)  # the same runs (thread counts, clusters, CPUs) as the probe
    print(f"C: {args.cc} " + " and ".join(f"[{' '.join(f)}]" for f in binaries.values())
          + f", per kernel the one with the higher median; arrays {array_bytes / 1e6:.0f} MB each; {args.trials} trials; "
          f"{args.rounds} rounds", flush=True)

    rows, record = [], []
    for run in runs:
        n, cpus = run["threads"], run["cpus"]
        print(f"{n} thread(s) on CPU {','.join(map(str, cpus))} ({run['cluster']})", flush=True)
        py_bests: dict[str, list[float]] = {}
        c_bests: dict[str, dict[str, list[float]]] = {}  # kernel -> C flags -> round bests
        for r in range(args.rounds):
            order = ("c", "py") if r % 2 == 0 else ("py", "c")
            for who in order:
                if who == "c":
                    for flags, kernels in run_c_all(binaries, array_bytes, cpus, args.trials).items():
                        record.append({"threads": n, "cpus": cpus, "round": r, "who": "c", "flags": flags,
                                       "kernels": kernels})
                        for k, v in kernels.items():
                            c_bests.setdefault(k, {}).setdefault(flags, []).append(v["best_gbps"])
                    continue
                res = run_python(array_bytes, cpus, args.trials)
                record.append({"threads": n, "cpus": cpus, "round": r, "who": "py", "kernels": res["kernels"]})
                for k, v in res["kernels"].items():
                    py_bests.setdefault(k, []).append(v["best_gbps"])
                    for method, gbps in (v.get("best_gbps_by_method") or {}).items():  # the numba engine's read
                        py_bests.setdefault(f"{k}: {method}", []).append(gbps)
        for k in bandwidth.KERNELS:
            by_flags = c_bests[k]
            c_flags = max(by_flags, key=lambda f: statistics.median(by_flags[f]))
            c, py = by_flags[c_flags], py_bests[k]
            row = {"threads": n, "kernel": k, "c_flags": c_flags, "c_gbps": max(c), "py_gbps": max(py), "ratio": max(py) / max(c),
                   "median_ratio": statistics.median(py) / statistics.median(c),
                   "paired_median_ratio": statistics.median(p / q for p, q in zip(py, c))}
            rows.append(row)
            print(f"  {k:<6} C {max(c):6.2f}  Python {max(py):6.2f}  ratio {row['ratio']:5.3f}"
                  f"  median ratio {row['median_ratio']:5.3f}  paired {row['paired_median_ratio']:5.3f}   (round bests C {min(c):.2f}-{max(c):.2f}, "
                  f"Python {min(py):.2f}-{max(py):.2f})", flush=True)
            if len(by_flags) > 1:
                print("    C medians: " + ", ".join(f"[{f}] {statistics.median(v):.2f}" for f, v in by_flags.items())
                      + "; the higher is the reference", flush=True)
            for name in sorted(x for x in py_bests if x.startswith(f"{k}: ")):
                by = py_bests[name]
                print(f"    {name}: Python {max(by):6.2f}, median of round bests / C's {statistics.median(by) / statistics.median(c):5.3f}",
                      flush=True)

    print("\nthreads kernel   C GB/s  Python GB/s  ratio  median ratio  paired median ratio")
    for r in rows:
        print(f"{r['threads']:>7} {r['kernel']:<7} {r['c_gbps']:7.2f} {r['py_gbps']:12.2f} {r['ratio']:6.3f} "
              f"{r['median_ratio']:13.3f} {r['paired_median_ratio']:20.3f}"
              + ("" if r["paired_median_ratio"] >= 0.95 else "  < 0.95 (paired median)"))
    if args.json:
        args.json.write_text(json.dumps({"array_bytes": array_bytes, "trials": args.trials, "compilers": [[args.cc, *f] for f in binaries.values()],
                                         "summary": rows, "rounds": record}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
