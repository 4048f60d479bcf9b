"""``rwkvprobe bandwidth``: the STREAM-style probe (and the NPU side with --npu), as a table or JSON."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from rwkvprobe.cli.console import err_console, out_console, print_warnings
from rwkvprobe.cli.options import parse_int_list
from rwkvprobe.fsutil import ensure_writable_dir
from rwkvprobe.measure import bandwidth, history, system
from rwkvprobe.measure.bandwidth import cpu_text
from rwkvprobe.npu import bandwidth as npubw
from rwkvprobe.npu import toolkit
from rwkvprobe.npu.device import load_device
from rwkvprobe.report.markdown import HISTORY_SLOW
from rwkvprobe.report.sections import npu_bandwidth_lines
from rwkvprobe.results import new_results, save_results


def bandwidth_cmd(
    size: Optional[str] = typer.Option(None, "--size", help="Bytes per array, e.g. 128M or 1G (K/M/G = 1024-based; "
                                       "kB/MB/GB = 1000-based). Default: 4x the last-level cache."),
    threads: Optional[str] = typer.Option(None, "--threads", help="Thread counts, e.g. 1,2. Default: 1 and all CPUs "
                                          "(of each cluster on big.LITTLE)."),
    trials: int = typer.Option(10, "--trials", help="Timed trials per kernel, best kept (1-100)."),
    cpus: Optional[str] = typer.Option(None, "--cpus", help="Pin to big, little, all, or CPU numbers like 0-3. "
                                       "Default: each cluster on its own, then all CPUs."),
    json_out: bool = typer.Option(False, "--json", help="Print the results JSON on stdout instead of the table."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the results JSON (with the environment) to this file."),
    engine: str = typer.Option("auto", "--engine", help="Kernel engine: auto (numba when installed), numba, or numpy."),
    npu: bool = typer.Option(False, "--npu", help="Also the NPU side: memory-only graphs (elementwise add, copy, a 64 MB GEMV) "
                             "through the RKNN compiler; its DDR-cycle figure, labelled as the compiler's estimate (no board)."),
    device: str = typer.Option("rk3588", "--device", help="With --npu: the device profile whose NPU clock turns cycles into time."),
    use_history: bool = typer.Option(True, "--history/--no-history", help="Compare the read figure with this machine's "
                                     "earlier read probes (analyze's and this command's: the last 7 days, same threads "
                                     "and CPUs, default array size) and record it for the runs to come. --no-history: "
                                     "neither. The file: $RWKVPROBE_BANDWIDTH_HISTORY, else "
                                     "~/.cache/rwkvprobe/bandwidth-history.json."),
):
    """Memory bandwidth, STREAM-style: copy, scale, add, triad and read; GB/s per thread count and cluster."""
    if npu:  # refuse a missing toolkit or an unknown device before measuring anything
        toolkit.require_toolkit()
        load_device(device)
    array_bytes = bandwidth.parse_size(size) if size is not None else None
    thread_counts = parse_int_list(threads, "--threads") if threads is not None else None
    cpu_list = system.resolve_cpus(cpus)
    engine = bandwidth.engine_name(engine)
    if out is not None:  # refuse an unwritable path before measuring
        ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    env = system.capture_environment()
    before = system.snapshot_dynamic()
    result = bandwidth.measure_bandwidth(array_bytes, thread_counts, trials, cpu_list,
                                         progress=lambda m: err_console.print(m, markup=False, highlight=False),
                                         engine=engine)
    results = new_results("bandwidth", env, {"size": array_bytes, "threads": thread_counts, "trials": trials,
                                             "cpus": cpu_list, "engine": engine})
    results.update(bandwidth=result, before=before, after=system.snapshot_dynamic())
    results["warnings"] = system.environment_warnings(env, before, results["after"])
    if use_history:
        results["bandwidth_history"] = read_history(result, cpu_list, " ".join(results["command"]))
    if npu:
        results["npu_bandwidth"] = npubw.measure(device, progress=lambda m: err_console.print(m, markup=False))
    if out is not None:
        save_results(out, results)
    if json_out:
        print(json.dumps(results, indent=1))
    else:
        out_console.print(bandwidth_table(result))
        for line in history_lines(results.get("bandwidth_history") or []):
            print(line)
        if npu:
            for line in npu_bandwidth_lines(results["npu_bandwidth"]):
                print(line)
    print_warnings(results)
    err_console.print(f"bandwidth: done in {result['total_seconds']:.1f} s" + (f", wrote {out}" if out else ""),
                      markup=False, highlight=False)


def read_history(result: dict, cpus: list[int] | None, command: str, now: float | None = None) -> list[dict]:
    """The read figure of each run that analyze would take too (the same threads, the CPUs it would pin, arrays of
    the default size or larger), beside this machine's earlier probes of that setup (measure/history.py), then
    recorded among them. [] when the history is off."""
    now = time.time() if now is None else now
    out = []
    for run in result["runs"]:
        read = run.get("kernels", {}).get("read")
        n = run["threads"]
        if (not read or not run.get("check_ok", True)
                or result["array_bytes"] < bandwidth.default_array_bytes(result.get("llc_bytes"))
                or [r["cpus"] for r in bandwidth.plan_runs([n], cpus)] != [run["cpus"]]):
            continue  # not what analyze probes: a cluster it would not pin alone, or arrays that may fit in a cache
        earlier = history.earlier_probes(n, cpus, result["engine"], now=now)
        if earlier is None:
            return []
        gbps = [p["read_best_gbps"] for p in earlier["probes"]]
        recorded = history.record([{"at": now, "read_best_gbps": read["best_gbps"],
                                    "array_bytes": result["array_bytes"]}], n, cpus, result["engine"], command, now=now)
        out.append({"threads": n, "cpus": run["cpus"], "read_best_gbps": read["best_gbps"], "path": earlier["path"],
                    "max_age_days": earlier["max_age_days"], "earlier_probes": len(gbps),
                    "earlier_min_gbps": min(gbps, default=None), "earlier_max_gbps": max(gbps, default=None),
                    "earlier_middle_gbps": statistics.median_low(gbps) if gbps else None,
                    "recorded": recorded})
    return out


def history_lines(entries: list[dict]) -> list[str]:
    """One line per run: its read figure against this machine's earlier probes."""
    lines = []
    for h in entries:
        head = f"read, {h['threads']} thread(s) on CPU {cpu_text(h['cpus'])}: {h['read_best_gbps']:.1f} GB/s"
        if not h["earlier_probes"]:
            lines.append(f"{head}; no earlier probe of this setup on this machine"
                         + (f" (recorded in {h['path']})" if h["recorded"] else ""))
            continue
        share = h["read_best_gbps"] / h["earlier_middle_gbps"]
        text = (f"{head}; this machine's {h['earlier_probes']} earlier probe(s) (last {h['max_age_days']:g} days): "
                f"{h['earlier_min_gbps']:.1f}-{h['earlier_max_gbps']:.1f} GB/s, middle {h['earlier_middle_gbps']:.1f}, "
                f"this run {share:.0%} of it")
        if share < HISTORY_SLOW:
            text += ": memory read slower now than usual (other processes or VMs were using it)"
        lines.append(text)
    return lines


def bandwidth_table(result: dict) -> Table:
    """A rich Table: one row per run and kernel, STREAM's columns."""
    llc = f"{result['llc_bytes'] / 1e6:.3g} MB" if result.get("llc_bytes") else "unknown"
    reported = (result.get("cache") or {}).get("reported_bytes")
    if reported and result.get("llc_bytes") and reported != result["llc_bytes"]:
        llc += f" by a read scan; the CPU reports {reported / 1e6:.3g} MB"
    engine = result["engine"] + (f", {result['engine_tuning']}" if result.get("engine_tuning") else "")
    caption = (f"{engine}, 3 float64 arrays x {result['array_bytes'] / 1e6:.0f} MB (LLC {llc}), "
               f"best of {result['trials']} trials; GB/s = 1e9 bytes/s, bytes counted as STREAM does")
    table = Table(title="Memory bandwidth (STREAM-style)", caption=caption)
    for col in ("cluster", "threads", "CPUs", "kernel", "best GB/s", "avg GB/s", "min s", "max s"):
        table.add_column(col, justify="left" if col in ("cluster", "CPUs", "kernel") else "right")
    for i, run in enumerate(result["runs"]):
        if i:
            table.add_section()
        for j, (name, k) in enumerate(run["kernels"].items()):
            first = j == 0
            table.add_row(run["cluster"] if first else "", str(run["threads"]) if first else "",
                          cpu_text(run["cpus"]) if first else "", name, f"{k['best_gbps']:.2f}", f"{k['avg_gbps']:.2f}",
                          f"{k['min_seconds']:.5f}", f"{k['max_seconds']:.5f}")
        if not run["check_ok"]:
            table.add_row("", "", "", "[red]wrong values in the arrays[/red]", "", "", "", "")
    return table
