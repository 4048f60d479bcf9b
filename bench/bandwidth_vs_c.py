"""Compare rwkvprobe's numpy bandwidth probe with a compiled C/OpenMP STREAM-style reference.

Builds bench/stream_ref.c with the system C compiler into bench/stream_ref (gitignored), then for
each thread count runs the C reference and the Python probe side by side, same array size, same
trials and same pinned CPUs, alternating which goes first to spread drift over both (a second binary that builds the same
program as the first is not run). Prints, per
thread count and kernel, the best GB/s of each over all rounds and the ratio Python / C, the ratio of
the medians of the per-round bests (steadier on a shared machine), and the spread of the per-round
bests, and the paired median ratio: the median over rounds of Python's best / C's best in the same round. Target (where the
in-process comparison below cannot run):
paired median ratio >= 0.95. The paired figure is the one that holds on a shared host: this VM's bandwidth jumps
between about 36 and 60+ GB/s (two threads) for tens of seconds at a time, so one side's median can come from the
fast phase and the other's from the slow one (0.65-0.74 "median ratio" in a run whose rounds, side by side, read
0.95-1.10); within one round both ran seconds apart.

Where ``-march=native`` compiles (x86-64), a second binary adds ``-mprefer-vector-width=256``: on the Zen 4 dev VM
gcc's default 512-bit loops moved add and triad about 20% slower on one core than 256-bit ones. Each round runs
both; per kernel, C's figures are those of the binary with the higher median over the rounds, so the reference is
the best C here, not one flag set (and, like Python's, one run's best of the trials per round).

Then, per thread count, C and Python in this one process (``--interleaved-trials``, default 40): stream_ref.c built as
a library, its OpenMP team pinned to the same CPUs, and the probe's own StreamTeam, alternating kernel by kernel, so
that a drift of the host moves both sides of each pair alike. Its paired median is the figure the target applies to.

    python bench/bandwidth_vs_c.py [--size 128M] [--threads 1,2] [--trials 10] [--rounds 5] [--interleaved-trials 40]
                                   [--json FILE]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from rwkvprobe.measure import bandwidth, system  # noqa: E402

SOURCE = HERE / "stream_ref.c"
BINARY = HERE / "stream_ref"
FLAG_SETS = (["-march=native"], ["-mcpu=native"], [])  # first that compiles wins
WIDE_256 = "-mprefer-vector-width=256"  # x86-64 only: the second binary's extra flag
TARGET = 0.95  # issue 14: Python / C, per kernel, at every thread count


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
            second.unlink(missing_ok=True)
            if extra == ["-march=native"] and _compile(cc, wide, second) is None:
                if second.read_bytes() == BINARY.read_bytes():
                    # The same program (an AVX2-only CPU such as Zen 3 prefers 256-bit vectors already): running
                    # it twice a round and keeping the faster median would hand C the better of two samples of
                    # one program against Python's one, a bias of a few percent on a host whose bandwidth moves.
                    print(f"C: [{' '.join(wide)}] builds the same binary as [{' '.join(flags)}]: run once",
                          flush=True)
                    second.unlink()
                else:
                    built[str(second)] = wide
            return built
        errors.append(error)
    sys.exit("could not build stream_ref:\n" + "\n".join(errors))


def build_libraries(cc: str, binaries: dict[str, list[str]]) -> dict[str, str]:
    """The same kernels as a shared library, once per C binary's flags (``-DSTREAM_REF_LIB -shared -fPIC``):
    {flags as text: library path}; empty (with a note) where the compiler cannot build one."""
    libs = {}
    for binary, flags in binaries.items():
        lib = Path(binary).with_name("lib" + Path(binary).name + ".so")
        error = _compile(cc, [*flags, "-DSTREAM_REF_LIB", "-shared", "-fPIC"], lib)
        if error is not None:
            print(f"C library: not built ({error}); no interleaved comparison", flush=True)
            return {}
        libs[" ".join(flags)] = str(lib)
    return libs


def load_libraries(paths: dict[str, str]) -> dict[str, ctypes.CDLL]:
    """Load the libraries into this process, with OpenMP's idle threads asleep (not spinning on the CPUs the
    probe's workers need between C's kernels)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # read by libgomp when it loads
    os.environ.pop("OMP_PROC_BIND", None)  # stream_ref_bind pins the team itself
    libs = {}
    for flags, path in paths.items():
        lib = ctypes.CDLL(path)
        lib.stream_ref_bind.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        lib.stream_ref_bind.restype = ctypes.c_int
        lib.stream_ref_fill.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long]
        lib.stream_ref_kernel.argtypes = [ctypes.c_int, *[ctypes.c_void_p] * 3, ctypes.c_long,
                                          ctypes.POINTER(ctypes.c_double)]
        lib.stream_ref_kernel.restype = ctypes.c_double
        libs[flags] = lib
    return libs


def interleaved(libs: dict[str, ctypes.CDLL], array_bytes: int, cpus: list[int], trials: int) -> dict:
    """C and the Python probe in this one process, trial by trial: for every kernel of every trial, each C
    library's OpenMP team (pinned to ``cpus``) on its own arrays, then the probe's own ``StreamTeam`` (its pinned
    worker threads, its compiled kernels, its timing) on its arrays, the order turned round every trial. A drift
    of the host's bandwidth, which moves a whole process's run by 20% here, then moves both sides of a pair alike.
    Returns {"seconds": {side: {kernel: [trial seconds]}}, "check_ok": {side: bool}, "methods": {kernel: [the
    probe's method of each trial]}} with side = C flags or "python"."""
    from threadpoolctl import threadpool_limits

    elements = array_bytes // bandwidth.ITEM_BYTES
    bandwidth.check_memory(array_bytes, arrays=3 * (len(libs) + 1))
    saved = os.sched_getaffinity(0)
    first = next(iter(libs.values()))  # one OpenMP runtime in the process: its team serves every library
    if first.stream_ref_bind((ctypes.c_int * len(cpus))(*cpus), len(cpus)) != 0:
        sys.exit(f"could not pin the OpenMP threads to CPUs {cpus}")
    try:
        arrays = {}
        for flags, lib in libs.items():
            a, b, c = (bandwidth._aligned_empty(elements) for _ in range(3))
            lib.stream_ref_fill(a.ctypes.data, b.ctypes.data, c.ctypes.data, elements)
            arrays[flags] = (a, b, c)
        sides = [*libs, "python"]
        seconds: dict[str, dict[str, list[float]]] = {side: {k: [] for k in bandwidth.KERNELS} for side in sides}
        methods: dict[str, list[str]] = {k: [] for k in bandwidth.KERNELS}  # the probe's method of each timed call
        total = ctypes.c_double()
        with bandwidth.StreamTeam(elements, cpus) as team, threadpool_limits(limits=1, user_api="blas"):  # not OpenMP
            passes = bandwidth.WARMUP_TRIALS + trials
            for t in range(passes):
                order = sides[t % len(sides):] + sides[:t % len(sides)]
                for ki, k in enumerate(bandwidth.KERNELS):
                    for side in order:
                        if side == "python":
                            turn = bandwidth.kernel_methods(k, team._kernels)
                            if t >= bandwidth.WARMUP_TRIALS and team.engine == "numba":  # the methods take turns
                                methods[k].append(turn[team.calls[k] % len(turn)])
                            s = team.run(k)
                        else:
                            a, b, c = arrays[side]
                            s = libs[side].stream_ref_kernel(ki, a.ctypes.data, b.ctypes.data, c.ctypes.data,
                                                             elements, ctypes.byref(total))
                        if t >= bandwidth.WARMUP_TRIALS:
                            seconds[side][k].append(s)
            check_ok = {"python": bandwidth._check(team, bandwidth.KERNELS, passes)}
        for flags, (a, b, c) in arrays.items():  # the probe's own check, on C's arrays (every C side ends equal)
            c_team = SimpleNamespace(a=a, b=b, c=c, read_value=total.value, elements=elements)
            check_ok[flags] = bandwidth._check(c_team, bandwidth.KERNELS, passes)
    finally:
        os.sched_setaffinity(0, saved)  # the OpenMP bind pinned this (the calling) thread to cpus[0]
    return {"seconds": seconds, "check_ok": check_ok, "methods": methods}


def report_interleaved(inter: dict, rows: list[dict], array_bytes: int) -> None:
    """Print the in-process comparison per kernel, and add its figures to this thread count's ``rows``: per kernel,
    the C library with the higher median speed is the reference (as for the binaries); the paired median is the
    median over trials of C's seconds / Python's seconds in the same trial (Python's speed / C's). Where the probe
    takes m methods in turn (the numba engine: its best trial is the best of either, see bandwidth.kernel_methods),
    the pairs are windows of m consecutive trials, each side's best in the window: the probe's figure against C's
    best of as many trials, seconds apart; each method's own paired median is printed below it."""
    seconds, ok = inter["seconds"], inter["check_ok"]
    c_sides = [side for side in seconds if side != "python"]
    print(f"  in one process, alternating kernel by kernel, {len(seconds['python']['copy'])} trials"
          + ("" if all(ok.values()) else f"  VALUES WRONG: {[side for side, good in ok.items() if not good]}"),
          flush=True)
    for row in rows:
        k = row["kernel"]
        ref = min(c_sides, key=lambda side: statistics.median(seconds[side][k]))
        c, py = seconds[ref][k], seconds["python"][k]
        nbytes = bandwidth.kernel_bytes(k, array_bytes // bandwidth.ITEM_BYTES)
        names = inter["methods"].get(k) or []
        window = max(len(set(names)), 1)
        paired = [min(c[i:i + window]) / min(py[i:i + window]) for i in range(0, len(py) - window + 1, window)]
        row.update(interleaved_c_flags=ref, interleaved_c_gbps=nbytes / min(c) / 1e9,
                   interleaved_py_gbps=nbytes / min(py) / 1e9, interleaved_ratio=min(c) / min(py),
                   interleaved_paired_median_ratio=statistics.median(paired),
                   interleaved_check_ok=ok[ref] and ok["python"])
        print(f"  {k:<6} C {row['interleaved_c_gbps']:6.2f}  Python {row['interleaved_py_gbps']:6.2f}  ratio "
              f"{row['interleaved_ratio']:5.3f}  paired median {row['interleaved_paired_median_ratio']:5.3f}  "
              f"(paired quartiles {statistics.quantiles(paired, n=4)[0]:.3f}-{statistics.quantiles(paired, n=4)[2]:.3f})",
              flush=True)
        for method in dict.fromkeys(names) if window > 1 else ():  # the numba engine's methods, trial by trial
            mine = [q / p for p, q, m in zip(py, c, names) if m == method]
            row.setdefault("interleaved_paired_median_by_method", {})[method] = statistics.median(mine)
            print(f"    {k}: {method}: paired median {statistics.median(mine):5.3f}", flush=True)


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
    parser.add_argument("--interleaved-trials", type=int, default=40,
                        help="trials of the in-process comparison, C and Python alternating kernel by kernel "
                             "(0: none)")
    parser.add_argument("--json", type=Path, help="also write every round's figures to this file")
    args = parser.parse_args(argv)

    binaries = build(args.cc)
    libs = load_libraries(build_libraries(args.cc, binaries)) if args.interleaved_trials > 0 else {}
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
                    for method, gbps in (v.get("best_gbps_by_method") or {}).items():  # the numba engine's methods
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
        if libs:
            inter = interleaved(libs, array_bytes, cpus, args.interleaved_trials)
            record.append({"threads": n, "cpus": cpus, "who": "interleaved", **inter})
            report_interleaved(inter, rows[-len(bandwidth.KERNELS):], array_bytes)

    print("\nthreads kernel   C GB/s  Python GB/s  ratio  median ratio  paired median ratio  interleaved paired median")
    for r in rows:
        judged = "interleaved_paired_median_ratio" if "interleaved_paired_median_ratio" in r else "paired_median_ratio"
        print(f"{r['threads']:>7} {r['kernel']:<7} {r['c_gbps']:7.2f} {r['py_gbps']:12.2f} {r['ratio']:6.3f} "
              f"{r['median_ratio']:13.3f} {r['paired_median_ratio']:20.3f}"
              + (f" {r['interleaved_paired_median_ratio']:26.3f}" if judged != "paired_median_ratio" else "")
              + ("" if r[judged] >= TARGET else f"  < {TARGET} ({judged.replace('_ratio', '').replace('_', ' ')})"))
    if libs:
        print(f"Target: the interleaved paired median >= {TARGET} (C and Python alternating kernel by kernel in one "
              "process: the figure a drift of the host's bandwidth does not move; the columns before it pair whole runs)")
    if args.json:
        args.json.write_text(json.dumps({"array_bytes": array_bytes, "trials": args.trials, "compilers": [[args.cc, *f] for f in binaries.values()],
                                         "summary": rows, "rounds": record}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
