"""Measured (or modelled) ceilings against their nominal figures: the report's "% of nominal" column.

A nominal figure comes only from a device profile (``profiles/devices/``, each figure with its source): for a
modelled device (``analyze --device``), or for a run on a board whose device tree says RK3588. Anywhere else the
nominal figure is unknown and the report says so: rwkvprobe does not guess a CPU's peak from its name.
"""

from __future__ import annotations

from rwkvprobe.npu.device import load_device

NPU_PREFIXES = ("rknn", "rknnlite", "NPU")


def _device(results: dict) -> tuple[dict | None, str]:
    if results.get("device"):
        return results["device"], "the modelled device"
    board = (results.get("environment") or {}).get("board") or {}
    if board.get("rk3588"):
        return load_device("rk3588"), "this board's device tree (RK3588)"
    return None, ""


def rows(results: dict) -> list[dict]:
    """One row per ceiling: value, nominal (or None), percent (or None) and the nominal's source."""
    dev, why = _device(results)
    out = []

    def add(what, value, unit, nominal=None, source=None):
        out.append({"ceiling": what, "value": value, "unit": unit, "nominal": nominal["value"] if nominal else None,
                    "percent": 100 * value / nominal["value"] if nominal and value else None,
                    "source": (f"{nominal['source']} (via {why})" if nominal else None)})

    for c in results.get("ceilings", []):
        if not c.get("peak_gflops"):
            continue
        npu = c["backend"].startswith(NPU_PREFIXES)
        nominal = None
        if dev:
            table = dev["npu_peak_gflops"] if npu else dev["cpu_peak_gflops"]
            nominal = table.get(c["dtype"])
        add(f"{c['backend']} {c['dtype']} GFLOP/s", c["peak_gflops"], "GFLOP/s", nominal)
        if npu and c.get("gemv_gbps"):
            add(f"{c['backend']} {c['dtype']} GB/s (cold GEMV)", c["gemv_gbps"], "GB/s", dev["dram_theoretical_gbps"] if dev else None)
    bw = results.get("bandwidth") or {}
    best = max((run["kernels"]["read"]["best_gbps"] for run in bw.get("runs", []) if "read" in run.get("kernels", {})),
               default=None)
    if best:
        add("DRAM GB/s (read kernel, best)" + (" (modelled)" if bw.get("modelled") else ""), best, "GB/s",
            dev["dram_theoretical_gbps"] if dev else None)
    npu_bw = results.get("npu_bandwidth") or {}
    for g in npu_bw.get("graphs", []):
        if g["compiler"].get("gbps"):
            add(f"NPU GB/s, {g['graph']} (RKNN compiler estimate)", g["compiler"]["gbps"], "GB/s",
                {"value": npu_bw["dram_theoretical_gbps"], "source": npu_bw["dram_theoretical_source"]} if npu_bw.get(
                    "dram_theoretical_gbps") else None)
    return out


