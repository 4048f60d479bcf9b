"""matplotlib figures for the analyze report (PNG, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

KIND_COLORS = {"att": "#4C72B0", "lora": "#8172B2", "ffn": "#55A868", "head": "#C44E52", "custom": "#937860",
               "non-matmul (modelled)": "#BBBBBB"}
BOUND_MARKERS = {"compute-bound": "^", "bandwidth-bound": "o", "overhead-bound": "s"}


def pyplot():
    """matplotlib's pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out, write the PNG and free the figure."""
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    return path


def _label(s: dict) -> str:
    return f"{s['backend']} {s['dtype']}"


def roofline_plot(verdict: dict, path: Path, title: str) -> Path:
    """Log-log roofline: measured ceilings per backend/dtype, one point per measured layer call."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    intens = [r["intensity"] for s in verdict["series"] for r in s["rows"] if r.get("measured")]
    lo = min(intens + [0.1]) / 2
    hi = max(intens + [100.0]) * 2
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    for i, s in enumerate(verdict["series"]):
        color = colors[i % len(colors)]
        roof = np.minimum(s["peak_gflops"], x * s["bandwidth_gbps"])
        ax.plot(x, roof, color=color, lw=1.5, label=f"{_label(s)} roof (peak {s['peak_gflops']:.0f} GFLOP/s)")
        for bound, marker in BOUND_MARKERS.items():
            pts = [(r["intensity"], r["attained_gflops"]) for r in s["rows"] if r.get("measured") and r["bound"] == bound]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, color=color, marker=marker, s=28, alpha=0.85, edgecolors="black", linewidths=0.3)
    for bound, marker in BOUND_MARKERS.items():
        ax.scatter([], [], color="white", edgecolors="black", marker=marker, label=bound)
    bw = verdict.get("bandwidth_gbps")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte moved)")
    ax.set_ylabel("attained GFLOP/s (measured)")
    ax.set_title(f"{title}\nroofs: measured peak per backend/dtype; slope: measured DRAM bandwidth {bw:.1f} GB/s"
                 if bw else title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def layers_plot(verdict: dict, path: Path, title: str, m: int = 1) -> Path:
    """Grouped bars: time per call of each layer shape, backends side by side (the seed's bar graph)."""
    plt = pyplot()
    series = [s for s in verdict["series"] if any(r["m"] == m and r.get("measured") for r in s["rows"])]
    names = []
    for s in series:
        for r in s["rows"]:
            if r["m"] == m and r["layer"] not in names:
                names.append(r["layer"])
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(names) + 3), 5.5), dpi=110)
    width = 0.8 / max(len(series), 1)
    for i, s in enumerate(series):
        times = {r["layer"]: r["seconds"] for r in s["rows"] if r["m"] == m and r.get("measured")}
        ys = [times.get(n, np.nan) * 1e6 for n in names]
        ax.bar(np.arange(len(names)) + i * width - 0.4 + width / 2, ys, width, label=_label(s))
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("time per call (µs, measured median, log scale)")
    ax.set_title(f"{title}: per-layer matmul time, M={m}", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def share_plot(verdict: dict, path: Path, title: str) -> Path:
    """Decode time per token split by layer kind, one bar per backend/dtype."""
    plt = pyplot()
    series = [s for s in verdict["series"] if s["model"].get("decode")]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(series) + 2), dpi=110)
    for i, s in enumerate(series):
        d = s["model"]["decode"]
        left = 0.0
        parts = [(k, d["matmul_seconds"] * v) for k, v in sorted(d["share_by_kind"].items())]
        parts.append(("non-matmul" + ("" if d.get("non_matmul_measured") else " (modelled)"), d["non_matmul_seconds"]))
        for kind, sec in parts:
            ax.barh(i, sec * 1e3, left=left, color=KIND_COLORS.get(kind, "#999999"),
                    label=kind if i == 0 else None)
            left += sec * 1e3
        ax.text(left, i, f" {left:.1f} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(series)))
    ax.set_yticklabels([_label(s) for s in series])
    ax.set_xlabel("decode time per token (ms)")
    ax.set_title(f"{title}: where decode time goes (layers x runs per token)", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=8, loc="lower right")
    return save_figure(fig, path)
