"""The sweep report: sweep.md, sweep.csv and two PNG plots, rendered from a results file alone."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from rwkvprobe.fsutil import atomic_write_text, ensure_writable_dir
from rwkvprobe.report.format import environment_section, md_table
from rwkvprobe.report.markdown import skipped_lines
from rwkvprobe.report.plots import pyplot, save_figure
from rwkvprobe.verdict.fit import NOISE_Z, PEAK_FRACTIONS, power_law_predict, rel_sigma, roofline_predict, summarize_sweep

REPORT = "sweep.md"
CSV = "sweep.csv"
PLOTS = {"time": "sweep_time.png", "gflops": "sweep_gflops.png"}
CSV_COLUMNS = ("backend", "dtype", "size", "m", "k", "n", "flops", "bytes", "status", "median_seconds",
               "min_seconds", "mean_seconds", "stdev_seconds", "iqr_seconds", "spread", "samples", "rel_sigma",
               "gflops", "gbps", "rel_err", "tolerance", "outlier", "note")


# ------------------------------------------------------------------------------------------------
# Formatting


def pm(x: float | None, s: float | None, unit: str = "", scale: float = 1.0) -> str:
    """'2432 ± 64', '91.3 ± 1.2 GFLOP/s': the uncertainty to two significant digits, the value to match."""
    if x is None:
        return "-"
    x, u = x * scale, (s * scale if s is not None else None)
    suffix = f" {unit}" if unit else ""
    if not u or not math.isfinite(u):
        return f"{x:.3g}{suffix}"
    digits = max(0, 1 - math.floor(math.log10(u)))
    if x and u < 1e-3 * abs(x):  # far below the value's precision: four significant digits are enough
        digits = max(0, 3 - math.floor(math.log10(abs(x))))
        return f"{x:.{digits}f} ± <{10.0 ** -digits:g}{suffix}"
    return f"{x:.{digits}f} ± {u:.{digits}f}{suffix}"


def size_pm(x: float, s: float | None) -> str:
    """A size with its uncertainty, as whole numbers when the uncertainty is at least 1."""
    if s is None or s < 1:
        return f"{x:.0f}" if s is not None or float(x).is_integer() else f"{x:.1f}"
    if s >= 10:
        digits = -(math.floor(math.log10(s)) - 1)
        return f"{round(x, digits):.0f} ± {round(s, digits):.0f}"
    return f"{x:.0f} ± {s:.0f}"


def _us(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} µs"


def _axis(results: dict) -> str:
    grid = (results.get("settings") or {}).get("grid") or {}
    return grid.get("describe") or "size n"


# ------------------------------------------------------------------------------------------------
# Sentences


def _fit_text(entry: dict) -> str:
    fits = entry.get("fits")
    if not fits or not fits["roofline"].get("ok"):
        return "too few points to fit"
    rf, pl, cmp_ = fits["roofline"], fits["power_law"], fits["comparison"]
    parts = [f"t0 = {pm(rf['t0_seconds']['value'], rf['t0_seconds']['sigma'], 'µs', 1e6)}"]
    if rf.get("ambiguous"):
        p_, w_ = rf["peak_gflops"], rf["bandwidth_gbps"]
        parts.append(f"one rate: P = {pm(p_['value'], p_['sigma'], 'GFLOP/s')} or, in bytes, "
                     f"W = {pm(w_['value'], w_['sigma'], 'GB/s')} (all points at "
                     f"{rf['intensity_range'][0]:.3g}-{rf['intensity_range'][1]:.3g} FLOP/byte cannot tell which)")
    else:
        for key, name, unit in (("peak_gflops", "P", "GFLOP/s"), ("bandwidth_gbps", "W", "GB/s")):
            c = rf[key]
            if c["status"] == "fitted":
                parts.append(f"{name} = {pm(c['value'], c['sigma'], unit)}")
            else:
                parts.append(f"{name} > {c['lower_bound']:.3g} {unit} (no point limited by it)")
    text = "roofline fit " + ", ".join(parts)
    if pl.get("ok"):
        text += f"; power law t ∝ n^{pm(pl['p']['value'], pl['p']['sigma'])}"
    if cmp_["preferred"] == "roofline":
        text += f"; the roofline model fits better (ΔAICc {cmp_['delta_aicc']:.1f})"
    elif cmp_["preferred"] == "power_law":
        text += f"; the power law fits better (ΔAICc {-cmp_['delta_aicc']:.1f})"
    elif cmp_.get("delta_aicc") is not None:
        text += "; both models fit equally well"
    return text


def _reach_text(entry: dict) -> str:
    reach = entry["reach"]
    if not reach.get("peak_gflops"):
        return ""
    bits = []
    for lv in reach["levels"]:
        pct = f"{lv['fraction']:.0%}"
        if lv["from_x"] is None:
            bits.append(f"{pct} of it nowhere in the range")
        elif lv["at_start"]:
            bits.append(f"{pct} of it already at n = {lv['from_x']:.0f}")
        else:
            bits.append(f"{pct} of it from n = {size_pm(lv['from_x'], lv['sigma'])}")
        if lv["drops_below"]:
            bits[-1] += " (below again at n ≈ " + ", ".join(f"{x:.0f}" for x in lv["drops_below"]) + ")"
    return (f"peaks at {reach['peak_gflops']:.1f} GFLOP/s (n = {reach['peak_x']:.0f}) and reaches "
            + " and ".join(bits))


def pair_sentence(pair: dict) -> str:
    a, b = pair["a"], pair["b"]
    name = {"a": a, "b": b}
    other = {"a": b, "b": a}
    lo, hi = pair["sizes"][0], pair["sizes"][-1]
    cs = pair["crossovers"]
    tied = pair.get("tied_from")
    tail = f"; tied within noise from n = {tied:.0f} on" if tied is not None and tied > lo else ""
    if not cs:
        f = pair["faster"]
        if f["first"] == f["last"] == "tie" or (tied is not None and tied <= lo):
            return f"{a} and {b} are tied within noise at every common size (n = {lo}..{hi})."
        if tail:
            first = f["first"] if f["first"] != "tie" else None
            if first:
                return f"{name[first]} is faster than {other[first]} at the smaller sizes{tail}: no crossover."
            return f"{a} vs {b}: no significant crossover{tail}."
        winners = {f["first"], f["last"]} - {"tie"}
        if len(winners) == 1:
            w = winners.pop()
            tied = " (tied within noise at some sizes)" if "tie" in (f["first"], f["last"]) else ""
            return f"{name[w]} is faster than {other[w]} over the whole range n = {lo}..{hi}{tied}: no crossover."
        return f"{a} vs {b}: no significant crossover in n = {lo}..{hi}."
    bits = []
    for i, c in enumerate(cs):
        w = c["faster_above"]
        verb = "beats" if i == 0 else "is faster again than"
        note = f", {c['ties_between']} tied size(s) in between" if c["ties_between"] else ""
        bits.append(f"{name[w]} {verb} {other[w]} from n = {size_pm(c['x'], c['sigma'])} "
                    f"(between {c['between'][0]:.0f} and {c['between'][1]:.0f}{note})")
    return "; ".join(bits) + tail + "."


def summary_sentences(results: dict, summary: dict | None = None) -> list[str]:
    """The headline findings: per backend its fit and reach, per pair its crossovers."""
    summary = summary or summarize_sweep(results.get("measurements", []))
    s = results.get("settings") or {}
    grid = s.get("grid") or {}
    sizes = grid.get("sizes") or []
    out = []
    if sizes:
        out.append(f"Sweep of {_axis(results)} for n = {sizes[0]}..{sizes[-1]} ({len(sizes)} sizes), "
                   f"{'cold' if s.get('cold', True) else 'warm'} cache, {s.get('threads')} "
                   f"thread{'' if s.get('threads') == 1 else 's'}.")
    if not summary["series"]:
        return out + ["No backend produced a checked measurement: nothing to fit (see Skipped and failed)."]
    top = max(e["sizes"][-1] for e in summary["series"])
    at_top = [(e["label"], e["seconds"][-1], e["gflops"][-1], e["rel_sigma"][-1])
              for e in summary["series"] if e["sizes"][-1] == top]
    lbl, t, g, sig = min(at_top, key=lambda v: v[1])
    tied = [v[0] for v in at_top if v[0] != lbl and math.log(v[1] / t) <= NOISE_Z * math.hypot(sig, v[3])]
    out.append(f"**Fastest at the largest size measured (n = {top}): {lbl}**, {_us(t)} a call, {g:.1f} GFLOP/s"
               + (f" (tied within noise with {', '.join(tied)})." if tied else "."))
    for e in summary["series"]:
        text = f"**{e['label']}**: " + _reach_text(e)
        text += ("; " if e["reach"].get("peak_gflops") else "") + _fit_text(e) + "."
        if e["outlier_sizes"]:
            text += f" Outliers (left out of the fits): n = {', '.join(str(x) for x in e['outlier_sizes'])}."
        out.append(text)
    for p in summary["pairs"]:
        out.append(pair_sentence(p))
    stopped = results.get("stopped")
    if stopped:
        out.append(f"The run stopped at its {stopped['budget_seconds']:.3g} s budget with "
                   f"{len(stopped['not_measured'])} point(s) not measured: `rwkvprobe sweep --resume DIR "
                   "--budget SECONDS` completes it.")
    return out


# ------------------------------------------------------------------------------------------------
# CSV


def csv_text(results: dict, summary: dict) -> str:
    outliers = {(e["backend"], e["dtype"], x) for e in summary["series"] for x in e["outlier_sizes"]}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for p in sorted(results.get("measurements", []), key=lambda p: (p.get("size", 0), p["backend"], p["dtype"])):
        t = p.get("timing") or {}
        check = p.get("check") or {}
        if p.get("skipped"):
            status, note = "skipped", p["skipped"]
        elif p.get("error"):
            status, note = "error", p["error"]
        elif check and not check.get("ok"):
            status, note = "wrong", check.get("detail", "")
        elif t:
            status, note = "ok", ""
        else:
            status, note = "not timed", ""
        med = t.get("median_seconds")
        w.writerow([p["backend"], p["dtype"], p.get("size"), p["m"], p["k"], p["n"], p["flops"], p["bytes"], status,
                    *[_num(t.get(k)) for k in ("median_seconds", "min_seconds", "mean_seconds", "stdev_seconds",
                                               "iqr_seconds", "spread")],
                    t.get("n", ""), _num(rel_sigma(t)) if t else "",
                    _num(p["flops"] / med / 1e9) if med else "", _num(p["bytes"] / med / 1e9) if med else "",
                    _num(check.get("rel_err")), _num(check.get("tolerance")),
                    "yes" if (p["backend"], p["dtype"], p.get("size")) in outliers else "", note])
    return buf.getvalue()


def _num(x) -> str:
    return "" if x is None else f"{x:.6g}"


# ------------------------------------------------------------------------------------------------
# Plots


def _dense(e: dict, count: int = 200):
    """Sizes between the first and last measured, with FLOPs and bytes interpolated in log-log (exact for
    the grid's monomials)."""
    x = np.asarray(e["sizes"], float)
    xs = np.geomspace(x[0], x[-1], count)
    lx = np.log(x)
    f = np.exp(np.interp(np.log(xs), lx, np.log(np.asarray(e["flops"], float))))
    b = np.exp(np.interp(np.log(xs), lx, np.log(np.asarray(e["bytes"], float))))
    return xs, f, b


def time_plot(results: dict, summary: dict, path: Path, title: str) -> Path:
    """Log-log time per call vs size: measured medians, fitted roofline (solid) and power law (dashed),
    crossovers marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11.5, 6), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {}
    for i, e in enumerate(summary["series"]):
        c = colors[i % len(colors)]
        color[e["label"]] = c
        x = np.asarray(e["sizes"], float)
        t = np.asarray(e["seconds"], float)
        out = np.isin(x, e["outlier_sizes"])
        err = t * np.asarray(e["rel_sigma"])
        ax.errorbar(x[~out], t[~out], yerr=err[~out], fmt="o", ms=4, color=c, label=f"{e['label']} measured")
        if out.any():
            ax.scatter(x[out], t[out], marker="x", s=50, color=c, label=f"{e['label']} outlier")
        fits = e.get("fits")
        if fits and len(x) >= 2:
            xs, f, b = _dense(e)
            if fits["roofline"].get("ok"):
                ax.plot(xs, roofline_predict(fits["roofline"], f, b), "-", color=c, lw=1.3,
                        label=f"{e['label']} roofline fit")
            if fits["power_law"].get("ok"):
                ax.plot(xs, power_law_predict(fits["power_law"], xs), "--", color=c, lw=1, alpha=0.7,
                        label=f"{e['label']} power law n^{fits['power_law']['p']['value']:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ymin, ymax = ax.get_ylim()
    for p in summary["pairs"]:
        for c in p["crossovers"]:
            ax.axvline(c["x"], color="grey", ls=":", lw=1)
            ax.axvspan(c["x"] - c["sigma"], c["x"] + c["sigma"], color="grey", alpha=0.12)
            ax.text(c["x"], ymin * 1.15, f" {p['a']} = {p['b']}\n n = {size_pm(c['x'], c['sigma'])}",
                    fontsize=7, rotation=90, va="bottom", ha="right", color="dimgrey")
    ax.set_ylim(ymin, ymax)
    ax.set_xlabel(f"size n: {_axis(results)}")
    ax.set_ylabel("time per call (s, median, measured)")
    ax.set_title(f"{title}\nmeasured points, fits t0 + max(F/P, B/W) (solid) and a·n^p (dashed), "
                 "crossovers dotted", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return save_figure(fig, path)


def gflops_plot(results: dict, summary: dict, path: Path, title: str) -> Path:
    """Attained GFLOP/s vs size, the fitted roofline's prediction, and where 50% and 90% of peak are reached."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11.5, 6), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, e in enumerate(summary["series"]):
        c = colors[i % len(colors)]
        x = np.asarray(e["sizes"], float)
        g = np.asarray(e["gflops"], float)
        out = np.isin(x, e["outlier_sizes"])
        ax.plot(x[~out], g[~out], "o", ms=4, color=c, label=f"{e['label']} measured")
        if out.any():
            ax.scatter(x[out], g[out], marker="x", s=50, color=c, label=f"{e['label']} outlier")
        fits = e.get("fits")
        if fits and fits["roofline"].get("ok") and len(x) >= 2:
            xs, f, b = _dense(e)
            ax.plot(xs, f / roofline_predict(fits["roofline"], f, b) / 1e9, "-", color=c, lw=1.2, alpha=0.8,
                    label=f"{e['label']} roofline fit")
        reach = e["reach"]
        if reach.get("peak_gflops"):
            for lv, marker in zip(reach["levels"], ("v", "^")):
                ax.axhline(lv["level_gflops"], color=c, ls=":", lw=0.8, alpha=0.6)
                if lv["from_x"] is not None:
                    ax.plot([lv["from_x"]], [lv["level_gflops"]], marker, color=c, ms=9, mec="black", mew=0.5,
                            label=f"{e['label']} reaches {lv['fraction']:.0%} of peak")
    ax.set_xscale("log")
    ax.set_xlabel(f"size n: {_axis(results)}")
    ax.set_ylabel("attained GFLOP/s (2MKN / median time)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{title}\nattained GFLOP/s; dotted: {' and '.join(f'{f:.0%}' for f in PEAK_FRACTIONS)} "
                 "of each backend's measured peak", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------------
# The report


def _title(results: dict) -> str:
    cpu = ((results.get("environment") or {}).get("cpu") or {}).get("model") or "this machine"
    return f"matmul scaling on {cpu}"


def render_sweep(results: dict, out_dir: Path) -> Path:
    """Write sweep.md, sweep.csv and the plots into ``out_dir`` from a sweep results file; returns the report."""
    out_dir = ensure_writable_dir(out_dir)
    summary = summarize_sweep(results.get("measurements", []))
    title = _title(results)
    pics = {}
    if summary["series"]:
        pics["time"] = time_plot(results, summary, out_dir / PLOTS["time"], title)
        pics["gflops"] = gflops_plot(results, summary, out_dir / PLOTS["gflops"], title)
    atomic_write_text(out_dir / CSV, csv_text(results, summary))
    path = out_dir / REPORT
    atomic_write_text(path, "\n".join(_markdown(results, summary, title, pics)) + "\n")
    return path


def _markdown(results: dict, summary: dict, title: str, pics: dict) -> list[str]:
    md = [f"# rwkvprobe sweep: {title}", ""]
    md += [f"Measured {results.get('created', '')} with rwkvprobe {results.get('rwkvprobe_version', '')}: "
           f"`{' '.join(results.get('command', []))}`. Every time is a measurement on this machine, each point "
           f"checked against a float64 reference first. Shapes: A[M,K] x W[K,N], {_axis(results)}; the seed "
           "article names them A[M,N] x B[N,K].", "", "## Summary", ""]
    md += [f"- {s}" for s in summary_sentences(results, summary)]
    warnings = results.get("warnings") or []
    if warnings:
        md += ["", "**Warnings about this run:**", ""] + [f"- {w}" for w in warnings]
    md += [""]
    if pics:
        md += ["## Plots", "", f"![time vs size]({PLOTS['time']})", "", f"![GFLOP/s vs size]({PLOTS['gflops']})", ""]
    md += _fits_section(summary)
    md += _crossover_section(summary)
    md += _reach_section(summary)
    md += _measurements_section(results, summary)
    md += _skipped_section(results)
    md += _environment_section(results)
    md += _method_section(results)
    return md


def _fits_section(summary: dict) -> list[str]:
    rows, notes = [], []
    for e in summary["series"]:
        fits = e.get("fits")
        if fits and fits["roofline"].get("ambiguous"):
            notes += [f"- {e['label']}: {fits['roofline']['note']}."]
        if not fits:
            rows.append([e["label"], *["-"] * 10])
            continue
        rf, pl, cmp_ = fits["roofline"], fits["power_law"], fits["comparison"]

        def ceiling(c, unit):
            if c["status"] == "fitted":
                return f"{pm(c['value'], c['sigma'])} ({c['points']} pts)"
            if c["status"] == "ambiguous":
                return f"{pm(c['value'], c['sigma'])} (or the other: one rate)"
            return f"> {c['lower_bound']:.3g} (none limited)"

        if rf.get("ok"):
            counts = {r: rf["regime"].count(r) for r in ("overhead", "bandwidth", "compute")}
            roof = [pm(rf["t0_seconds"]["value"], rf["t0_seconds"]["sigma"], scale=1e6),
                    ceiling(rf["peak_gflops"], "GFLOP/s"), ceiling(rf["bandwidth_gbps"], "GB/s"),
                    "/".join(str(counts[r]) for r in ("overhead", "bandwidth", "compute")),
                    f"{100 * rf['rms_log']:.1f}%"]
        else:
            roof = ["-"] * 5
        power = ([f"{pl['a_seconds']['value']:.3g}", pm(pl["p"]["value"], pl["p"]["sigma"]), f"{100 * pl['rms_log']:.1f}%"]
                 if pl.get("ok") else ["-"] * 3)
        better = {"roofline": "roofline", "power_law": "power law"}.get(cmp_["preferred"], "tie")
        if cmp_.get("delta_aicc") is not None:
            better += f" (ΔAICc {abs(cmp_['delta_aicc']):.1f})"
        rows.append([e["label"], *roof, *power, better,
                     ", ".join(str(x) for x in e["outlier_sizes"]) or "none"])
    return ["## Fitted cost models", "",
            "Roofline with overhead, t = t0 + max(F/P, B/W), F = 2MKN FLOPs, B = the bytes of W, A and C once; "
            "and the article's power law t = a·n^p. Both are fitted to log times weighted by each point's "
            "uncertainty (its samples' spread, at least 2%); ± is one standard error from the Jacobian, scaled "
            "by the residual scatter. A ceiling no point is limited by cannot be estimated: it is given as a "
            "lower bound (what was attained). The better model has the lower AICc (a difference under 2 is a "
            "tie). Regimes count the points where the fitted t0, B/W or F/P term is largest.", ""] + \
        md_table(["backend dtype", "t0 (µs)", "P (GFLOP/s)", "W (GB/s)", "overhead/bandwidth/compute points",
                "rms error", "a (s)", "p", "rms error", "better fit", "outliers (n)"], rows) + [""] + \
        (notes + [""] if notes else []) + [
        "W is an *effective* bandwidth: the bytes counted (each matrix once) over the time of the points the "
        "fit calls bandwidth-bound. In a square sweep those are the smallest sizes, where the kernel rather than "
        "DRAM is usually what limits; with a fixed M (decode) it is close to what the weights stream at.", ""]


def _crossover_section(summary: dict) -> list[str]:
    if not summary["pairs"]:
        return []
    rows = []
    for p in summary["pairs"]:
        cs = p["crossovers"]
        cell = "; ".join(f"{p[c['faster_above']]} faster from n = {size_pm(c['x'], c['sigma'])} "
                         f"(between {c['between'][0]:.0f} and {c['between'][1]:.0f})" for c in cs) or "none"
        who = {"a": p["a"], "b": p["b"], "tie": "tie", None: "-"}
        rows.append([f"{p['a']} vs {p['b']}", cell, f"{who[p['faster']['first']]}", f"{who[p['faster']['last']]}"])
    return ["## Crossovers", "",
            "Where the faster of two backends changes, on the measured medians interpolated in log-log. Sizes "
            "where the two differ by less than twice their combined uncertainty count as ties, not crossings; "
            "± combines the bracketing points' noise, the interpolation error and any tied stretch.", ""] + \
        md_table(["pair", "crossovers", "faster at smallest n", "faster at largest n"], rows) + [""]


def _reach_section(summary: dict) -> list[str]:
    rows = []
    for e in summary["series"]:
        reach = e["reach"]
        if not reach.get("peak_gflops"):
            continue
        cells = []
        for lv in reach["levels"]:
            if lv["from_x"] is None:
                cells.append("not reached")
            elif lv["at_start"]:
                cells.append(f"≤ {lv['from_x']:.0f} (already at the smallest)")
            else:
                cells.append(size_pm(lv["from_x"], lv["sigma"]))
            if lv["drops_below"]:
                cells[-1] += " (below again at " + ", ".join(f"{x:.0f}" for x in lv["drops_below"]) + ")"
        rows.append([e["label"], f"{reach['peak_gflops']:.1f} (n = {reach['peak_x']:.0f})", *cells])
    if not rows:
        return []
    return ["## Reaching the peak", "",
            "The size from which each backend attains a share of its own peak (the highest measured GFLOP/s, "
            "outliers left out).", ""] + \
        md_table(["backend dtype", "peak GFLOP/s", *[f"{f:.0%} of peak from n" for f in PEAK_FRACTIONS]], rows) + [""]


def _measurements_section(results: dict, summary: dict) -> list[str]:
    series = summary["series"]
    if not series:
        return []
    sizes = sorted({x for e in series for x in e["sizes"]})
    shapes = {p.get("size"): (p["m"], p["k"], p["n"]) for p in results.get("measurements", [])}
    rows = []
    for x in sizes:
        row = [str(x), "x".join(str(v) for v in shapes.get(x, ("?",)))]
        for e in series:
            if x in e["sizes"]:
                i = e["sizes"].index(x)
                mark = " (outlier)" if x in e["outlier_sizes"] else ""
                row.append(f"{_us(e['seconds'][i])}, {e['gflops'][i]:.1f}{mark}")
            else:
                row.append("-")
        rows.append(row)
    return ["## Measurements", "", "Median time per call and attained GFLOP/s; every sample is in results.json, "
            "one row per point in sweep.csv.", ""] + \
        md_table(["n", "MxKxN", *[e["label"] for e in series]], rows) + [""]


def _skipped_section(results: dict) -> list[str]:
    lines = skipped_lines(results, lambda m: f"{m['backend']} {m['dtype']} n={m.get('size')} ({m['m']}x{m['k']}x{m['n']})")
    stopped = results.get("stopped")
    if stopped:
        left = stopped["not_measured"]
        lines.append(f"- {len(left)} point(s) not measured: the {stopped['budget_seconds']:.3g} s budget ran out "
                     f"(from n = {min(p['size'] for p in left)}); `--resume` completes them")
    return (["## Skipped and failed", ""] + lines + [""]) if lines else []


def _environment_section(results: dict) -> list[str]:
    s = results.get("settings", {})
    runs = results.get("runs") or []
    extra = [["Run time", "; ".join(f"estimated {r.get('estimate_seconds', 0):.0f} s, took "
                                    f"{r.get('elapsed_seconds', 0):.0f} s" for r in runs)]] if runs else []
    return environment_section(results, f"threads {s.get('threads')}, cpus {s.get('pinned_cpus') or 'not pinned'}, "
                                        f"{'cold' if s.get('cold', True) else 'warm'} cache, budget {s.get('budget_seconds')} s",
                               extra)


def _method_section(results: dict) -> list[str]:
    cold = (results.get("settings") or {}).get("cold", True)
    return ["## Method", "",
            "- Same engine as `rwkvprobe analyze`: each point's output for every weight copy is checked against a "
            "float64 reference before its time counts; a wrong result is reported, not timed.",
            ("- Cold cache: calls rotate over distinct weight buffers (plus an untimed eviction read) so that at "
             "least 4x the last-level cache passes between two uses of a buffer." if cold else
             "- Warm cache (the default for square grids, as the article's repeated calls of one model; --cold "
             "for weights read from DRAM on every call): one weight buffer reused, cache-resident where it fits."),
            "- Timing: warm-up, then repeats until the spread (IQR/median) is below 3% or the point's budget is "
            "spent; the median counts. Before measuring, each backend is timed on one or two shapes of the grid to "
            "estimate the run; points projected to take more than 10% of the budget are skipped and listed.",
            "- Fits (numpy only): the roofline model is solved exactly for every split of the points into "
            "bandwidth- and compute-bound, then refined by Levenberg-Marquardt on log residuals; outliers (robust "
            "z > 4 and > 15% off the better model) are flagged and left out.", ""]
