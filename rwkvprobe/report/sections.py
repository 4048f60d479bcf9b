"""The report's sections about the NPU and the nominal figures: the board's own eval_perf times, the NPU
bandwidth graphs, the RKNN compiler's whole-block estimates, the whole blocks timed in onnxruntime, and the
ceilings against their nominal figures. Each renders a record that the measuring code stored; none measures."""

from __future__ import annotations

from rwkvprobe.npu.cores import TARGET
from rwkvprobe.npu.evalperf import EVAL_PERF_DETAIL, EVAL_PERF_SOURCE, WALL_SOURCE
from rwkvprobe.verdict.blocks import block_comparison
from rwkvprobe.verdict.nominal import rows


def board_section(results: dict) -> list[str]:
    """The board measurements: eval_perf time beside the host's wall time over adb, per point."""
    points = [p for p in results.get("measurements", []) if p.get("source") == EVAL_PERF_SOURCE]
    for c in results.get("ceilings", []):
        if c.get("source") == EVAL_PERF_SOURCE:
            points += [p for p in [c.get("overhead"), *(c.get("compute") or []), c.get("gemv")] if p]
    if not points:
        return []
    board = results.get("board") or {}

    def us(x):
        return f"{x:.0f} µs" if x is not None else "-"

    rows = []
    for p in points:
        perf = p.get("eval_perf") or {}
        t = (p.get("timing") or {}).get("median_seconds")
        wall = (p.get("host_wall") or {}).get("median_seconds")
        npu = [r for r in perf.get("layers", []) if r.get("target") == "NPU"]
        load = ("/".join(f"{x:.0f}%" for x in npu[0]["workload"]) if npu and npu[0].get("workload") else "-")
        status = ("WRONG" if p.get("check") and not p["check"]["ok"] else (p.get("error") or "ok"))
        rows.append(f"| {p['backend']} {p['dtype']} | {p['m']}x{p['k']}x{p['n']} | {us(t * 1e6 if t else None)} | "
                    f"{us(perf.get('npu_us'))} | {us(wall * 1e6 if wall else None)} | {load} | {status[:80]} |")
    return ["## Board measurements (rknn-toolkit2 over adb)", "",
            f"Board {board.get('device_id') or '(the only one connected)'}, target {board.get('target', TARGET)}"
            + (f", runtime {' '.join(str(board['sdk_version']).split())}" if board.get("sdk_version") else "") + ". "
            f"Board time: {EVAL_PERF_DETAIL}; this is the time the verdict uses. Host wall time: {WALL_SOURCE}: "
            "shown for reference only, never used as an NPU time. Simulator times are never reported. "
            "Raw eval_perf output is in board/ beside results.json.", "",
            "| series | MxKxN | board time (eval_perf) | NPU ops (eval_perf) | host wall over adb | NPU core load (0/1/2) | status |",
            "|---|---|---|---|---|---|---|", *rows, ""]


def npu_bandwidth_section(results: dict) -> list[str]:
    r = results.get("npu_bandwidth")
    if not r:
        return []
    return ["## NPU bandwidth (RKNN compiler estimate)", "",
            "From `rwkvprobe bandwidth --npu`: memory-only graphs converted with the RKNN compiler, no board. "
            "Not a measurement.", "", "```"] + npu_bandwidth_lines(r) + ["```", ""]


def npu_bandwidth_lines(result: dict) -> list[str]:
    lines = [f"NPU bandwidth, {result['label']}: {result['device']}, rknn-toolkit2 "
             f"{result['toolkit'].get('rknn-toolkit2', '')}, DDR cycles at the {result['clock_mhz']:.0f} MHz NPU clock "
             f"({result['clock_source']})"]
    for r in result["graphs"]:
        c = r["compiler"]
        check = "simulator ok" if r["ok"] else f"FAILED ({r['error'] or 'simulator check'})"
        if c["gbps"] is None:
            fig = f"{c['note']}; RW {c['bytes'] / 1e6:.1f} MB"
        else:
            pct = c["gbps"] / result["dram_theoretical_gbps"]
            fig = (f"{c['gbps']:.1f} GB/s ({c['bytes'] / 1e6:.1f} MB in {c['ddr_cycles']} DDR cycles; {pct:.0%} of the "
                   f"{result['dram_theoretical_gbps']:.1f} GB/s theoretical DRAM)")
        lines.append(f"  {r['graph']:5s} {r['what']}: {fig} [{check}]")
    return lines


def block_estimate_lines(results: dict) -> list[str]:
    """Plain-text lines: the compiler's whole-block NPU decode estimate beside the per-call models."""
    b = results.get("compiler_block_estimates")
    if not b:
        return []
    lines = []
    for d in b["decode"]:
        extra = "" if d["all_simulator_ok"] else " (a graph missed its simulator check: see the report)"
        lines.append(f"NPU {d['dtype']} decode, {b['label']}: {d['seconds_per_token'] * 1e3:.2f} ms/token "
                     f"({d['tokens_per_second']:.1f} tokens/s; {d['how']}, at {b['clock_mhz']:.0f} MHz; modelled, "
                     f"not measured){extra}")
    return lines


def block_estimate_section(results: dict) -> list[str]:
    b = results.get("compiler_block_estimates")
    if not b:
        return []
    md = [f"## {b['label']}", "",
          f"`rwkvprobe convert PROFILE --block` built whole RWKV blocks (every op of a decode step, state in and out) with "
          f"rknn-toolkit2 {b['toolkit'].get('rknn-toolkit2', '')} for {b.get('target')}; its per-op "
          f"`Cycles(DDR/NPU/Total)` table, at the NPU clock of {b['clock_mhz']:.0f} MHz ({b['clock_source']}), gives the "
          "NPU decode estimate below in place of the fixed per-call overhead of the per-matmul models: one call per graph. "
          "The compiler's estimate, not a measurement. Ops it runs on the CPU, and elementwise ops it gives no cycles, "
          "add time it does not count.", ""]
    md += ["| dtype | NPU decode (compiler estimate) | tokens/s | how | full-model graph |", "|---|---|---|---|---|"]
    for d in b["decode"]:
        full = f"{d['model_graph_seconds'] * 1e3:.3f} ms" if d.get("model_graph_seconds") else "not converted"
        md.append(f"| {d['dtype']} | {d['seconds_per_token'] * 1e3:.3f} ms/token | {d['tokens_per_second']:.1f} | "
                  f"{d['how']} | {full} |")
    md += ["", "| graph | dtype | DDR / NPU / total cycles | time at clock | op kinds taking the cycles | ops on the CPU | "
               "ops with no cycle estimate | simulator check |", "|---|---|---|---|---|---|---|---|"]
    for g in b["graphs"]:
        kinds = ", ".join(f"{k['op']} {k['share']:.0%}" for k in g["op_kinds"][:4])
        sim = "-" if g["simulator_ok"] is None else ("ok" if g["simulator_ok"] else f"WRONG ({g['simulator_rel_err']:.1e})")
        md.append(f"| {g['graph']} | {g['dtype']} | {g['ddr_cycles']} / {g['npu_cycles']} / {g['total_cycles']} | "
                  f"{g['seconds'] * 1e3:.3f} ms | {kinds} | {', '.join(g['cpu_ops']) or 'none'} | "
                  f"{', '.join(g['no_estimate_ops']) or 'none'} | {sim} |")
    return md + [""]


def block_graph_section(results: dict, verdict: dict) -> list[str]:
    rows = block_comparison(results, verdict)
    if not rows:
        return []

    def ms(x):
        return "-" if x is None else f"{x * 1e3:.3f}"

    md = ["## Block measured as one graph", "",
          "onnxruntime ran whole-block ONNX graphs (`rwkvprobe onnx PROFILE --block`: every op of one decode step, "
          "state in and out; a test checks them against the reference forward step), timed cold like the matmuls. "
          "Beside each: the sum of its matmuls, measured one call each in the same series, plus its share of the "
          "non-matmul work as the decode figure above counts it (* where part of that sum is *modelled*). The ratio "
          "is the per-call and fusion effect, measured.", "",
          "| series | graph | measured as one graph (ms) | sum of its matmuls + non-matmul work (ms) | one graph / sum |",
          "|---|---|---|---|---|"]
    for r in rows:
        got = ms(r["graph_seconds"]) if r["graph_seconds"] else (r["status"] or "-")
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        md.append(f"| {r['backend']} {r['dtype']} | {r['kind']} | {got} | {ms(r['sum_seconds'])}"
                  f"{'*' if r['sum_partly_modelled'] else ''} | {ratio} |")
    return md + [""]


def nominal_section(results: dict) -> list[str]:
    rs = rows(results)
    if not rs:
        return []
    md = ["## Measured vs nominal", ""]
    if not any(r["nominal"] for r in rs):
        cpu = ((results.get("environment") or {}).get("cpu") or {}).get("model") or "this CPU"
        md += [f"% of nominal: unknown. rwkvprobe takes nominal figures only from a device profile "
               f"(`profiles/devices/`, each with its source), and none describes {cpu}.", ""]
    md += ["| ceiling | value | nominal | % of nominal | nominal's source |", "|---|---|---|---|---|"]
    for r in rs:
        nominal = "unknown" if r["nominal"] is None else f"{r['nominal']:.1f} {r['unit']}"
        pct = "unknown" if r["percent"] is None else f"{r['percent']:.0f}%"
        md.append(f"| {r['ceiling']} | {r['value']:.1f} {r['unit']} | {nominal} | {pct} | {r['source'] or '-'} |")
    return md + [""]
