"""Markdown report (and its PNG plots) from a results file: readable on GitHub as is."""

from __future__ import annotations

import statistics
from pathlib import Path

from rwkvprobe.fsutil import atomic_write_text, ensure_writable_dir
from rwkvprobe.measure.bandwidth import read_probes, sustained_read_gbps
from rwkvprobe.measure.contention import CANARY_SLOW, CONTENDED_SHARE, SLOW_POINT_FACTOR, machine_speed, summary
from rwkvprobe.measure.history import HISTORY_ENV
from rwkvprobe.model.profile import LayerList
from rwkvprobe.model.quant import QUICK_WHATIF_LEFT_OUT
from rwkvprobe.report import plots
from rwkvprobe.report.format import environment_section, md_table, ms
from rwkvprobe.report.sections import (
    block_estimate_section,
    block_graph_section,
    board_section,
    nominal_section,
    npu_bandwidth_section,
)
from rwkvprobe.verdict.roofline import (
    BURSTY,
    HEAVY_SHARE,
    KERNEL,
    KERNEL_BAND,
    KERNEL_LIMITED,
    RULE,
    best_series,
    main_bound,
    verdict_of,
    within_noise,
)
from rwkvprobe.verdict.validation import TARGET, summary_lines

#: the stability line says memory read slower than usual where this run's middle probe is below this share of the
#: middle of the machine's earlier probes (their best is a burst on a VM: judged against it, half of the dev VM's
#: stored runs said so)
HISTORY_SLOW = 0.8
PLOTS = {"roofline": "roofline.png", "layers": "layers.png", "share": "share.png"}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _label(s: dict) -> str:
    return f"{s['backend']} {s['dtype']}"


def _title(results: dict, layers: LayerList) -> str:
    if results.get("device"):
        return f"{layers.profile.name} on {results['device']['name']} (modelled)"
    cpu = (results.get("environment", {}).get("cpu") or {}).get("model") or "this machine"
    return f"{layers.profile.name} on {cpu}"


def _where(results: dict) -> str:
    return f"on a modelled {results['device']['name']}" if results.get("device") else "on this machine"


def _modelled_part(p: dict) -> str:
    return (f"the head, run once for the chunk's last token, at its roofline time "
            f"{ms(p['last_token_seconds'])} (no M=1 point measured)")


def verdict_sentences(verdict: dict, layers: LayerList, results: dict) -> list[str]:
    """The opening verdict in plain words, with the numbers behind it."""
    series = verdict["series"]
    best = best_series(series)
    if not best:
        prefill = [(s, p) for s in series for p in s["model"].get("prefill", [])
                   if not p["modelled"] or p.get("last_token_seconds") is not None]
        if prefill:
            # without M=1 points the head (run once a chunk, for its last token) is the model's time, labelled
            return ["No decode (M=1) point was measured (add 1 to --tokens for the decode verdict)."] + [
                f"Prefill in chunks of {p['chunk']} tokens: {p['tokens_per_second']:.1f} tokens/s ({_label(s)}, "
                f"matmuls only{', partly modelled: ' + _modelled_part(p) if p['modelled'] else ''})."
                for s, p in prefill]
        return ["No backend produced a checked measurement: no verdict (see Skipped and failed below)."]
    d = best["model"]["decode"]
    bounds = d["share_by_bound"]
    main = main_bound(bounds)
    name = layers.profile.name
    bw = best.get("bandwidth_gbps") or verdict["bandwidth_gbps"]  # a board series carries the board's
    if d["fully_measured"]:
        how = "measured"
    else:
        how = "*modelled*" if d["modelled_matmul_seconds"] >= d["matmul_seconds"] else "*partly modelled*"
    ties = tied_with(best, series, results)
    fastest = "the fastest" + (f", tied within noise with {', '.join(ties)}" if ties else "")
    kind_note = ""
    if best.get("float_kinds"):
        kind_note = (f" ({', '.join(best['quantized_kinds'])} at {best['dtype']}; {', '.join(best['float_kinds'])} and the "
                     f"embedding kept at {best['float_dtype']})")
    dram, dram_words = _dram(best, verdict, "modelled" if results.get("device") else "measured")
    reading = (f"reading {d['weight_bytes_per_token'] / 1e9:.3g} GB of weights per token{kind_note} at "
               f"{d['weight_gbps_attained']:.1f} GB/s, {_pct(d['weight_gbps_attained'] / dram)} of {dram_words}")
    if main == KERNEL:
        out = [f"**{name} decode {_where(results)} is kernel-limited**: {_pct(bounds[main])} of the per-token matmul "
               f"time ({_label(best)}, {fastest}) is in layers that reach less than {_pct(KERNEL_LIMITED)} of their "
               f"roofline bound (their real bytes over the DRAM bandwidth, their FLOPs over the kernel's own measured "
               f"peak): the kernel ({'dequantization or a slow GEMV' if best['dtype'] not in ('fp32', 'fp16', 'bf16') else 'a slow GEMV'}), "
               f"not memory or compute, holds them back; they read weights at {d['kernel_limited_gbps']:.1f} GB/s, "
               f"{_pct(d['kernel_limited_gbps'] / dram)} of {'sustained ' if dram < bw else ''}DRAM bandwidth. Best "
               f"decode ({how}): "
               f"{ms(d['seconds_per_token'])}/token ({d['tokens_per_second']:.3g} tokens/s), {reading}."]
    elif main is None:
        split = ", ".join(f"{k} {_pct(v)}" for k, v in sorted(bounds.items(), key=lambda kv: -kv[1]) if v >= 0.005)
        out = [f"**{name} decode {_where(results)} is mixed**: no bound clearly leads in the per-token matmul time "
               f"({_label(best)}, {fastest}): {split}. Best decode ({how}): "
               f"{ms(d['seconds_per_token'])}/token ({d['tokens_per_second']:.3g} tokens/s), {reading}."]
    else:
        out = [f"**{name} decode {_where(results)} is {main}**: {_pct(bounds[main])} of the per-token matmul time "
               f"({_label(best)}, {fastest}) is in {main} layers. Best decode ({how}): "
               f"{ms(d['seconds_per_token'])}/token ({d['tokens_per_second']:.3g} tokens/s), {reading}."]
    out += _smaller_weights_sentences(verdict, results)
    if main == KERNEL:
        out.append("A faster kernel for these shapes would help first: neither more FLOP/s nor fewer bytes per weight "
                   "speeds up a layer that reaches neither ceiling.")
    elif main == "bandwidth-bound":
        out.append("A faster matmul engine (more FLOP/s, an NPU) would not speed up decode by itself: "
                   "it waits on memory. Fewer bytes per weight would.")
    elif main == "compute-bound":
        # the fastest series' own weights: a quantized one measured faster than its float series just above
        out.append(f"More FLOP/s (a faster kernel, more cores, an NPU) would speed up decode; weights smaller than "
                   f"{_label(best)}'s alone would not.")
    elif main is None:
        out.append("No single change dominates: each layer's own bound (the per-layer tables below) says what would "
                   "speed it up, and the model-level table how much of the time each bound holds.")
    else:
        out.append("Per-call overhead dominates: fewer, larger calls (batching, fused layers) would help most.")
    # prefill from the fastest series whose prefill was measured (a decode-only series' prefill is modelled),
    # one with the sequential state update timed first (a matmul-only figure is only an upper bound)
    pre_series = min((s for s in series if not s.get("whatif") and s["model"].get("prefill")
                      and not any(p["modelled"] for p in s["model"]["prefill"])),
                     key=lambda s: (not s["model"]["prefill"][0].get("with_state"),
                                    s["model"]["prefill"][0].get("seconds", s["model"]["prefill"][0]["matmul_seconds"])),
                     default=best)
    for p in pre_series["model"].get("prefill", []):
        if p.get("with_state"):
            out.append(f"Prefill in chunks of {p['chunk']} tokens: {p['tokens_per_second']:.1f} tokens/s ({_label(pre_series)}: "
                       f"matmuls at M={p['chunk']}, the head once for the chunk's last token, plus the sequential "
                       f"state update, {ms(p['state_seconds'])} a chunk, timed as the reference loops over the chunk's "
                       "tokens" + (" in a forward pass's layers, with the norms, mixes and calls around it"
                                   if p.get("state_method") == "layer-pass" else "")
                       + f"{', partly modelled' if p['modelled'] else ''}).")
        else:
            out.append(f"Prefill in chunks of {p['chunk']} tokens: at most {p['tokens_per_second']:.1f} tokens/s "
                       f"({_label(pre_series)}, matmuls only, the head once for the chunk's last token"
                       f"{', partly modelled' if p['modelled'] else ''}: an upper bound, "
                       "the sequential state update is not timed for this backend).")
    out += _engine_sentences(series, results)
    wrong = [m for m in results.get("measurements", []) if m.get("check") and not m["check"]["ok"]]
    if wrong:
        out.append(f"**{len(wrong)} measurement(s) gave WRONG results** and were not timed: see below.")
    out += [f"**Warning, ceiling raised:** {w}." for w in verdict.get("ceiling_warnings", [])]
    if not results.get("device"):
        out.append(stability_line(results))
    if results.get("device"):
        out += _device_sentences(series, results)
    elif not any(s["backend"].split("[")[0] in ("rknnlite", "rknn") for s in series):
        out.append("No NPU was measured on this machine; NPU-vs-CPU figures need a run on the board "
                   "(the RK3588 NPU computes in fp16 whatever the graph says: compare it with CPU fp16, not fp32).")
    return out


def tied_with(best: dict, series: list[dict], results: dict) -> list[str]:
    """Series whose decode differs from the best one's by no more than their combined uncertainty."""
    if not best["model"].get("decode"):
        return []
    t_best = best["model"]["decode"]["seconds_per_token"]
    out = []
    for s in series:
        d = s["model"].get("decode")
        if s is best or not d or not d.get("fully_measured") or s.get("whatif"):
            continue
        if within_noise(best, t_best, s, d["seconds_per_token"], results):
            out.append(_label(s))
    return out


def history_text(results: dict, probes: list[float], earlier: list[float], sustained: float | None) -> str:
    """The stability line's words on a run judged with the machine's earlier probes (measure/history.py)."""
    hist = results["bandwidth_history"]
    both = probes + earlier
    text = (f"this run's {len(probes)} bandwidth probe(s) read {min(probes, default=0):.1f}-{max(probes, default=0):.1f} "
            f"GB/s, and {len(earlier)} probe(s) of this machine's earlier runs (the last {hist['max_age_days']:g} days, "
            f"same threads and CPUs) {min(earlier):.1f}-{max(earlier):.1f}: the DRAM ceiling is the best of all, "
            f"{max(both):.1f} GB/s")
    if sustained:  # sustained_read_gbps: the middle of this run's and the earlier probes
        text += (f", and the layers are judged at the middle of all, {sustained:.1f} GB/s, what the machine gives "
                 "most of the time (or at what a layer read itself, where more)")
    else:
        text += ", at which every layer is judged"
    mine, theirs = (statistics.median_low(probes) if probes else None), statistics.median_low(earlier)
    if mine is not None and mine < HISTORY_SLOW * theirs:
        text += (f"; **memory read slower during this run than usual on this machine** (its middle probe "
                 f"{mine:.1f} GB/s, {mine / theirs:.0%} of the earlier runs' middle, {theirs:.1f}): other processes or VMs were using it, so this run's layer times may be "
                 "slower than usual")
    return text + f" (`{HISTORY_ENV}=off` judges a run by its own probes only)"


def stability_line(results: dict) -> str:
    """One line: how steady the run was (bandwidth probes, contention around the points)."""

    probes = [gbps for _, gbps in read_probes(results, checked_only=False, history=False)]
    earlier = [p["read_best_gbps"] for p in (results.get("bandwidth_history") or {}).get("probes", [])]
    parts = []
    sustained = sustained_read_gbps(results)
    if earlier:
        parts.append(history_text(results, probes, earlier, sustained))
    elif len(probes) > 1 and sustained and max(probes) > BURSTY * sustained:
        parts.append(f"{len(probes)} bandwidth probes read {min(probes):.1f}-{max(probes):.1f} GB/s (spread "
                     f"{max(probes) / min(probes) - 1:.0%}: the best is the DRAM ceiling, the layers are judged at the "
                     f"middle probe, {sustained:.1f} GB/s)")
    elif len(probes) > 1:
        parts.append(f"{len(probes)} bandwidth probes read {min(probes):.1f}-{max(probes):.1f} GB/s "
                     f"(the best counts; spread {max(probes) / min(probes) - 1:.0%})")
    elif probes:
        parts.append(f"one bandwidth probe, {probes[0]:.1f} GB/s")
    c = summary(results.get("measurements", []), results.get("canary_reference_seconds"))
    if c["sampled"]:
        if c["contended"]:
            parts.append(f"{c['contended']} of {c['sampled']} points were timed while other processes or the "
                         f"hypervisor took at least {CONTENDED_SHARE:.0%} of the CPUs (up to {c['max_share']:.0%}; "
                         f"flagged in the layer tables)")
        else:
            parts.append(f"no point was timed under contention (other processes and steal at most "
                         f"{c['max_share']:.0%} of the CPUs, flag at {CONTENDED_SHARE:.0%})")
        if c["remeasured"]:
            parts.append(f"{c['remeasured']} contended point(s) were measured again")
        if c["slow_rechecked"]:
            parts.append(f"{c['slow_rechecked']} point(s) over {SLOW_POINT_FACTOR:g}x slower than their series' "
                         "ceilings predict were measured again (the faster kept)")
        if c["canary_sampled"]:
            slow = (f"{c['machine_slow']} point(s) were timed while it ran {CANARY_SLOW:.2f}x slower than its best "
                    "or more (flagged in the layer tables)" if c["machine_slow"] else "no point was timed while it ran "
                    f"{CANARY_SLOW:.2f}x slower than its best or more")
            parts.append(f"the machine's own speed (a fixed matmul timed around each point) was at most "
                         f"{c['canary_max_ratio']:.2f}x its best: {slow}")
            speed = machine_speed(results)
            if speed:
                parts.append(f"its median around the points, {speed['median_seconds'] * 1e6:.0f} µs, was "
                             f"{speed['ratio']:.2f}x the best of this run and this machine's {speed['earlier_runs']} "
                             f"earlier run(s) ({speed['best_seconds'] * 1e6:.0f} µs)"
                             + (": most of this run was timed while the machine ran slow (see the warnings)"
                                if speed["ratio"] >= CANARY_SLOW else ""))
            if c.get("put_off"):
                parts.append(f"{c['put_off']} point(s) were put off while it ran {CANARY_SLOW:.2f}x slower than its "
                             "best or more, and timed after the others")
            if c["machine_slow_rechecked"]:
                parts.append(f"{c['machine_slow_rechecked']} point(s) timed while the machine ran slow were measured "
                             "again after the others (the faster kept)")
        if c.get("second_windows"):
            parts.append(f"{c['second_windows']} decode point(s) of the heaviest shapes were timed in two windows, the "
                         "second after every point's first (the faster kept)")
        if c["near_line_rechecked"]:
            parts.append(f"{c['near_line_rechecked']} point(s) of the fastest series near the kernel-limited line "
                         "were measured again later in the run (the faster kept)")
        if c.get("heavy_rechecked"):
            parts.append(f"{c['heavy_rechecked']} point(s) carrying {HEAVY_SHARE:.0%} or more of the fastest series' "
                         "matmul time were measured again later in the run (the faster kept)")
        if c.get("series_heavy_rechecked"):
            parts.append(f"{c['series_heavy_rechecked']} point(s) carrying {HEAVY_SHARE:.0%} or more of another "
                         "series' matmul time were measured again with the budget left (the faster kept)")
    for entry in results.get("nonmatmul") or []:
        windows = entry.get("windows") if entry.get("engine") == "ggml" else None
        if windows and len(windows) > 1:
            each = ", ".join(f"{w * 1e6:.0f}" if w else "not timed (its check failed)" for w in windows)
            parts.append(f"the ggml block graph was timed {len(windows)} times, before and among or after the layer "
                         f"points: {each} µs a block (the fastest kept)")
    return "Stability: " + ("; ".join(parts) if parts else "not recorded in this results file") + "."


def _engine_sentences(series: list[dict], results: dict) -> list[str]:
    """ggml (the kernels of llama.cpp and rwkv.cpp): decode per format as measured, and f16 -> q4_0."""
    desc = (results.get("backends") or {}).get("ggml") or {}
    by_dtype = {s["dtype"]: s for s in series if s["backend"] == "ggml" and s["model"].get("decode")}
    ggml = {d: s["model"]["decode"] for d, s in by_dtype.items()}
    if not ggml:
        return []
    parts = [f"{d} {x['seconds_per_token'] * 1e3:.1f} ms/token{'' if x['fully_measured'] else ' (partly modelled)'}"
             for d, x in ggml.items()]
    n = desc.get("threads", "?")
    out = [f"ggml (the kernels of llama.cpp and rwkv.cpp; {n} thread{'' if n == 1 else 's'}), decode as measured: "
           + ", ".join(parts) + "."]
    kept = [s for s in series if s["backend"] == "ggml" and any(r.get("stored_as") for r in s["rows"])]
    if kept:
        floats = sorted({r["layer"].split(".")[0] if r["kind"] == "head" else r["kind"] for r in kept[0]["rows"]
                         if r.get("stored_as")})
        out.append(f"In the quantized ggml series, {', '.join(floats)} and the embedding stayed "
                   f"{desc.get('float_dtype', 'fp16')} (rwkv.cpp's rule), timed by the ggml {desc.get('float_dtype', 'fp16')} "
                   "kernel.")
    one = next(iter(ggml.values()))
    if one.get("non_matmul_engine") == "ggml":
        out.append(f"ggml's non-matmul work ({one['non_matmul_seconds'] * 1e3:.2f} ms/token) is measured as a ggml graph "
                   "of one block's elementwise ops and wkv7 state update, state carried, times n_layer.")
    elif one.get("non_matmul_stand_in"):
        out.append(f"ggml's non-matmul work ({one['non_matmul_seconds'] * 1e3:.2f} ms/token) is a torch-timed stand-in, "
                   "not a ggml graph (no ggml graph of this block here).")
    f16 = ggml.get("fp16")
    for q in ("q8_0", "q4_0"):
        if f16 and q in ggml:
            t16, tq = f16["seconds_per_token"], ggml[q]["seconds_per_token"]
            fewer = f"weights {f16['weight_bytes_per_token'] / ggml[q]['weight_bytes_per_token']:.2f}x fewer bytes per token"
            if within_noise(by_dtype["fp16"], t16, by_dtype[q], tq, results):
                out.append(f"ggml fp16 -> {q}: tied within noise ({t16 / tq:.2f}x as measured; {fewer}).")
            else:
                out.append(f"ggml fp16 -> {q}: {max(t16, tq) / min(t16, tq):.2f}x {'faster' if tq < t16 else 'slower'} "
                           f"decode as measured ({fewer}).")
    return out


def _smaller_weights_sentences(verdict: dict, results: dict) -> list[str]:
    """Measured int8/int4 speed-ups first (backend and format named), the bytes-only model beside them."""
    w = verdict["smaller_weights"]
    modelled = w["modelled"]
    bound = ", ".join(f"{q} ~{v['speedup']:.1f}x" for q, v in modelled.items() if q != "fp16")
    ref = w["reference"]
    if w["measured"]:
        parts = []
        for q in w["measured"]:
            vs = (f"{q['speedup_vs_reference']:.2f}x against {q['reference']}" if q.get("reference") else "")
            own = f"{q['backend']} {q['baseline']}"
            if q.get("reference") != own:
                vs += f", {q['measured_speedup']:.2f}x against {own}"
            of_dram = f"{_pct(q['dram_fraction'])} of {'sustained ' if q.get('dram_sustained') else ''}DRAM bandwidth"
            state = (f"kernel-limited: its quantized layers read {q['effective_gbps']:.1f} GB/s, {of_dram}"
                     if q["limited_by_kernel"] else f"its quantized layers read {q['effective_gbps']:.1f} GB/s, {of_dram}")
            parts.append(f"{q['backend']} {q['format']}: {ms(q['measured_seconds'])}/token, {vs} "
                         f"({q['weight_bytes_per_token'] / 1e9:.3g} GB of weights a token; {state})")
        kinds = w["measured"][0]
        line = (f"Smaller weights, measured ({', '.join(kinds['quantized_kinds'])} quantized; "
                f"{', '.join(kinds['float_kinds']) + ' and ' if kinds['float_kinds'] else ''}the embedding kept float): "
                + "; ".join(parts) + ".")
        beaten = [f"{q['backend']} {q['dtype']}" for q in w["measured"] if q.get("beats_modelled")]
        if bound and ref and beaten:
            line += (f" Bytes-only figure, *modelled* from {_label(ref)}'s layer times with dequantization taken as free "
                     f"and each layer as far from its roofline as there: {bound}; {' and '.join(beaten)} "
                     + (f"beats it (its kernel runs closer to its roofline than {_label(ref)}'s)." if len(beaten) == 1
                        else f"beat it (their kernels run closer to their rooflines than {_label(ref)}'s)."))
        elif bound and ref:
            line += (f" Bytes-only upper bound, *modelled* from {_label(ref)}'s layer times with dequantization taken "
                     f"as free: {bound}.")
        if (results.get("settings", {}).get("whatif_missing") or "").startswith(QUICK_WHATIF_LEFT_OUT):
            line += " onnxruntime's int8/int4 formats are not measured in --quick runs that measure these (run without --quick)."
        return [line]
    if modelled:
        parts = [f"{q} weights ~{v['speedup']:.1f}x (bytes {v['bytes_ratio']:.1f}x fewer)" for q, v in modelled.items()]
        return ["Smaller weights, *modelled* only from these layer times (best case: dequantization taken as free; "
                "an upper bound): " + ", ".join(parts) + f". Not measured: {w['why_not']}."]
    return []


def _decode(series: list[dict], backend_prefix: str, dtype: str) -> dict | None:
    for s in series:
        if s["backend"].startswith(backend_prefix) and s["dtype"] == dtype and s["model"].get("decode"):
            return s["model"]["decode"]
    return None


def _device_sentences(series: list[dict], results: dict) -> list[str]:
    """Like-for-like NPU vs CPU on a modelled device, and the published figures beside them."""
    out = []
    pairs = [("fp16", "fp16"), ("int8", "int8")]
    for cpu_dt, npu_dt in pairs:
        cpu = _decode(series, "CPU", cpu_dt)
        npu = _decode(series, "NPU, a call", npu_dt)
        fused = _decode(series, "NPU, fused", npu_dt)
        if cpu and npu and fused:
            out.append(f"*Modelled* {npu_dt} decode: CPU {cpu['tokens_per_second']:.1f} tokens/s, NPU "
                       f"{npu['tokens_per_second']:.1f} tokens/s with one NPU call per matmul, "
                       f"{fused['tokens_per_second']:.1f} tokens/s with the calls fused (no per-call overhead). "
                       "Like for like: NPU and CPU at the same weight type.")
    cpu32 = _decode(series, "CPU", "fp32")
    if cpu32:
        out.append(f"CPU fp32 (the accurate baseline, *modelled*): {cpu32['tokens_per_second']:.1f} tokens/s.")
    for pub in (results.get("device") or {}).get("published", []):
        if "tokens_per_second" in pub:
            out.append(f"Published for comparison: {pub['what']}: {pub['tokens_per_second']} tokens/s ({pub['source']}).")
    return out


def _quant_section(verdict: dict, results: dict) -> list[str]:
    rows = []
    for q in verdict["quant"]:
        rows.append([q["backend"], q["format"] + (" (what-if)" if q.get("whatif") else ""), q["baseline"], f"{q['bytes_ratio']:.2f}x" if q["bytes_ratio"] else "-",
                     ms(q["baseline_seconds"]), ms(q["measured_seconds"]) + ("" if q["fully_measured"] else " *"),
                     f"{q['measured_speedup']:.2f}x", f"{q['bound_speedup']:.2f}x" + (" (beaten)" if q.get("beats_bound") else ""),
                     f"{q['effective_gbps']:.1f}" if q["effective_gbps"] else "-",
                     _pct(q["dram_fraction"]) if q.get("dram_fraction") else "-",
                     "kernel (dequantization or GEMV)" if q["limited_by_kernel"] else "its roofline (memory or compute)"])
    if not rows:
        return []
    comps = verdict["quant"]
    rules = {}
    for q in comps:
        rules.setdefault((tuple(q["quantized_kinds"]), tuple(q["float_kinds"])), []).append(q["backend"])
    said = []
    for (kinds, floats), names in rules.items():
        rule = ((results.get("backends") or {}).get(names[0]) or {}).get("quantize_rule")
        said.append(f"{', '.join(sorted(set(names)))}: layers of kind {', '.join(kinds)} are stored quantized "
                    f"({'`--quantize`' if results.get('settings', {}).get('quantize') else (rule or 'the default rule, `--quantize` changes it')}); "
                    f"{', '.join(floats) or 'no other kind'} and the embedding stay at the float type")
    md = ["## Quantized weights, measured", "",
          "; ".join(said) + ". Each format's time is measured on "
          "its own kernel (checked against A x the dequantized weights). The bytes-only bound re-models the float "
          "layers with the format's real bytes per weight (scales and zero points included) as if dequantization "
          "were free, each layer as far from its roofline as the float layer was: an upper bound on the speed-up for a "
          "kernel no closer to its roofline than the float one, not a ceiling the format is judged against ('beaten' "
          "where a format's kernel runs closer to its own). 'Limited by' "
          f"reads the roofline: kernel when most of the quantized layers' time is in layers below {_pct(KERNEL_LIMITED)} "
          "of their bound (real bytes over the DRAM bandwidth, FLOPs over the format's own measured peak; a layer "
          f"within {_pct(KERNEL_BAND)} of that line counted in proportion). "
          "Formats measured by default for this what-if (decode shapes only) are marked what-if. * = partly modelled.", ""] + md_table(
        ["backend", "format", "vs", "fewer bytes", "baseline ms/token", "measured ms/token", "measured speed-up",
         "bytes-only bound", "weight GB/s effective", "of DRAM bandwidth", "limited by"], rows) + [""]
    for q in comps:
        md += [f"Per layer, {q['backend']} {q['format']} (M=1, time per call):", ""]
        md += md_table(["layer", "KxN", "runs/token", "stored as", f"{q['baseline']}", "measured", "bytes-only bound"],
                     [[x["layer"], shape_text(x), str(x["count"]),
                       f"{q['dtype']} ({x['bytes_per_weight']:.3g} B/weight)" if x["quantized"] else q["baseline"],
                       ms(x["baseline_seconds"]), ms(x["measured_seconds"]) if x["quantized"] else "-",
                       ms(x["bound_seconds"]) if x["quantized"] else "-"] for x in q["layers"]]) + [""]
    return md


def _compiler_section(results: dict, layers: LayerList) -> list[str]:
    comp = results.get("compiler_estimates")
    if not comp:
        if results.get("device"):
            return ["## RKNN compiler estimate", "", "Not available: install the toolkit (`rwkvprobe toolkit install`) "
                    "or pass `--rknn DIR` from `rwkvprobe convert` to add the compiler's own per-layer cycle estimates.", ""]
        return []
    by_shape = {(m["dtype"], m["m"], m["k"], m["n"]): m for m in comp["models"]}
    md = [f"## {comp['label']}", "",
          f"From the per-layer `Cycles(DDR/NPU/Total)` table that rknn-toolkit2 {comp['toolkit'].get('rknn-toolkit2', '')} "
          f"prints when it builds each layer for {comp.get('target')}, at the NPU clock of {comp['clock_mhz']:.0f} MHz "
          f"({comp['clock_source']}). The compiler's estimate, not a measurement; no per-call overhead included.", ""]
    rows, totals = [], {}
    for dt in ("fp16", "int8"):
        for layer in layers.layers:
            k, n = layer.call_shape
            e = by_shape.get((dt, 1, k, n))
            if not e:
                continue
            totals[dt] = totals.get(dt, 0.0) + e["seconds"] * layer.calls
            sim = "-" if e["simulator_ok"] is None else ("ok" if e["simulator_ok"] else f"WRONG ({e['simulator_rel_err']:.1e})")
            rows.append([dt, layer.name, shape_text({"k": k, "n": n, "batch": layer.batch}), str(layer.calls), str(e["ddr_cycles"]), str(e["npu_cycles"]),
                         ms(e["seconds"]), f"{e['bound']}-bound", sim])
    md += md_table(["dtype", "layer (M=1)", "KxN", "runs/token", "DDR cycles", "NPU cycles", "time at clock", "compiler says",
                  "simulator check"], rows) + [""]
    for dt, t in totals.items():
        md.append(f"- {dt}: decode matmuls {ms(t)}/token of NPU time by the compiler's estimate "
                  f"({1 / t:.1f} tokens/s before any per-call overhead).")
    return md + [""]


def render(results: dict, out_dir: Path) -> Path:
    """Write report.md and the plots into ``out_dir``; returns the report path."""
    out_dir = ensure_writable_dir(out_dir)
    layers, verdict = verdict_of(results)
    title = _title(results, layers)
    pics = {}
    if verdict["series"]:
        pics["roofline"] = plots.roofline_plot(verdict, out_dir / PLOTS["roofline"], title)
        pics["layers"] = plots.layers_plot(verdict, out_dir / PLOTS["layers"], title)
        pics["share"] = plots.share_plot(verdict, out_dir / PLOTS["share"], title)
    text = "\n".join(_markdown(results, layers, verdict, title, pics)) + "\n"
    path = out_dir / "report.md"
    atomic_write_text(path, text)
    return path


def _markdown(results: dict, layers: LayerList, verdict: dict, title: str, pics: dict) -> list[str]:
    env = results.get("environment", {})
    md = _verdict_section(results, layers, verdict, title)
    md += _model_level_section(verdict)
    md += _validation_section(results, layers)

    md += block_graph_section(results, verdict)
    md += _memory_section(layers, env)
    md += _what_if_section(verdict)
    md += _quant_section(verdict, results)
    md += _compiler_section(results, layers)

    md += block_estimate_section(results)

    md += npu_bandwidth_section(results)

    md += board_section(results)
    if not results.get("device") and not any(s["backend"].split("[")[0] in ("rknnlite", "rknn")
                                             for s in verdict["series"]):
        md += ["## NPU vs CPU", "",
               "No NPU backend ran in this results file. On an RK3588 the NPU executes fp16 (or int8) whatever the "
               "ONNX graph says, so a like-for-like comparison sets NPU fp16 beside CPU fp16, and CPU fp32 beside it "
               "only as the CPU's accurate baseline.", ""]
    if pics:
        md += ["## Plots", ""]
        md += [f"![roofline]({PLOTS['roofline']})", "", f"![per-layer times]({PLOTS['layers']})", "",
               f"![decode time share]({PLOTS['share']})", ""]
    md += _per_layer_section(verdict)
    md += _ceilings_section(results)

    md += nominal_section(results)
    md += _skipped_section(results)
    md += _environment_section(results)
    md += _method_section(results)
    return md


def _verdict_section(results: dict, layers: LayerList, verdict: dict, title: str) -> list[str]:
    """Title, what was run, the verdict sentences and the run's warnings."""
    md = [f"# rwkvprobe: {title}", ""]
    if results.get("device"):
        md += [f"**Modelled, not measured.** Written {results.get('created', '')} by rwkvprobe "
               f"{results.get('rwkvprobe_version', '')}: `{' '.join(results.get('command', []))}`. Every figure below "
               f"comes from the device profile `{results['device']['path']}` (each ceiling with its source, listed under "
               "Modelled ceilings) and, where shown, the RKNN compiler's own estimate. Run rwkvprobe on the board for "
               "measured figures.", "", "## Verdict", ""]
    else:
        md += [f"Measured {results.get('created', '')} with rwkvprobe {results.get('rwkvprobe_version', '')}: "
               f"`{' '.join(results.get('command', []))}`. Every time below is measured on this machine unless "
               "marked *modelled*.", "", "## Verdict", ""]
    md += [f"- {s}" for s in verdict_sentences(verdict, layers, results)]
    warnings = results.get("warnings") or []
    if warnings:
        md += ["", "**Warnings about this run:**", ""] + [f"- {w}" for w in warnings]
    return md


def _model_level_section(verdict: dict) -> list[str]:
    """Decode and prefill per series, with how each figure was obtained."""
    md: list[str] = []
    md += ["", "## Model-level figures", ""]
    rows = []
    for s in verdict["series"]:
        d = s["model"].get("decode")
        if not d:
            continue
        pre = "; ".join(f"M={p['chunk']}: {'' if p.get('with_state') else '≤'}{p['tokens_per_second']:.1f}"
                        f"{'*' if p['modelled'] else ''}" for p in s["model"].get("prefill", []))
        rows.append([_label(s), f"{d['seconds_per_token'] * 1e3:.1f}", f"{d['tokens_per_second']:.2f}",
                     f"{d['non_matmul_seconds'] * 1e3:.2f}" + ("" if d.get("non_matmul_measured") else "*")
                     + ("†" if d.get("non_matmul_stand_in") else ""),
                     f"{d['weight_gbps_attained']:.1f}", pre or "-",
                     ", ".join(f"{k} {_pct(v)}" for k, v in sorted(d["share_by_bound"].items(), key=lambda kv: -kv[1]))])
    md += md_table(["backend dtype", "decode ms/token", "tokens/s", "non-matmul ms", "weight GB/s",
                  "prefill tokens/s", "matmul time by bound"], rows)
    md += ["", "Decode = sum over layers of (median time per call x runs per token) + the non-matmul per-token "
           "work. For torch (and ggml, as a ggml graph, on RWKV-7) on an RWKV profile that work is measured: one block's layer norms, token-shift mixes, activations "
           "and RNN state update, run as a CPU forward pass runs them (TorchScript, state in fp32) with cold caches, "
           "times n_layer. Elsewhere it is *modelled* (marked *) as its bytes (RNN state read and written, vector "
           "parameters) over the DRAM bandwidth: a lower bound that leaves out framework per-op overhead. Layer times "
           "are measured, except those of layers that could not be measured (or of a modelled device), which use the "
           "model time: those rows are marked *. Prefill = the matmuls at M = chunk plus, for torch on an RWKV profile, the sequential state "
           "update (the reference loops over the chunk's tokens; timed in a ring of layers run over a chunk and split from "
           "their matmuls as `validate` splits the real pass, or as one bare block, times n_layer); where that "
           "is not timed the figure counts matmuls only and is marked ≤ (an upper bound). Time by bound "
           "counts measured layers below half of their roofline as kernel-limited."
           + (" † ggml: the non-matmul work is the same torch-timed block (fp32, ggml's activation type), a "
              "measured stand-in, not a ggml graph: rwkvprobe builds a ggml graph of the block for RWKV-7 (head size "
              "a multiple of 64) only."
              if any((s["model"].get("decode") or {}).get("non_matmul_stand_in") for s in verdict["series"]) else ""),
           ""]
    return md


def _dram(s: dict, verdict: dict, how: str = "measured") -> tuple[float, str]:
    """The DRAM figure a series' layers are judged at (GB/s) and its name in a sentence: the sustained bandwidth
    where the machine's came in bursts (bandwidth.sustained_read_gbps), else the series' ceiling W."""
    best = s.get("bandwidth_gbps") or verdict["bandwidth_gbps"]
    sustained = s.get("sustained_gbps")
    if sustained and best > BURSTY * sustained:
        return sustained, f"the sustained {sustained:.1f} GB/s DRAM bandwidth ({how}; bursts to {best:.1f})"
    return best, f"the {how} {best:.1f} GB/s DRAM bandwidth"


def _per_layer_section(verdict: dict) -> list[str]:
    """Each series' ceilings and every layer's time against its roofline."""
    md: list[str] = []
    md += ["## Per-layer verdict", "", f"Rule: {RULE}", ""]
    sustained, best = verdict.get("sustained_gbps"), verdict.get("bandwidth_gbps")
    if sustained and best and best > BURSTY * sustained:
        earlier = (f", {verdict['earlier_probe_count']} of them from this machine's earlier runs"
                   if verdict.get("earlier_probe_count") else "")
        md += [f"This machine's DRAM bandwidth came in bursts: its read probes gave {sustained:.1f} GB/s most of the "
               f"time (the middle probe of {verdict['probe_count']}{earlier}) and up to {best:.1f} GB/s (the best probe, each series' "
               "DRAM ceiling below). Each measured layer is judged at the sustained figure, or at what it read itself "
               "where that is more (timed in a burst), never above its series' ceiling: judged against a burst, a "
               "layer timed between bursts would look kernel-limited in one run and bandwidth-bound in the next.", ""]
    for s in verdict["series"]:
        md += [f"### {_label(s)}", "",
               f"Ceilings: peak {s['peak_gflops']:.1f} GFLOP/s, DRAM {s['bandwidth_gbps']:.1f} GB/s, per-call "
               f"overhead {ms(s['overhead_seconds'])}; ridge point {s['peak_gflops'] / s['bandwidth_gbps']:.1f} FLOP/byte."
               + "".join(f" **{a['ceiling'].capitalize()} ceiling raised to what layer {a['layer']} (M={a['m']}) "
                         "attained** (see the warning above)." if a["ceiling"] != "per-call overhead" else
                         f" **Per-call overhead lowered** (layer {a['layer']}, M={a['m']}, ran faster than the "
                         "measured overhead allows; see the warning above)."
                         for a in s.get("ceiling_adjustments", []))
               + "".join(f" **{d} weights held as {h}:** {s['backend']} has no {d} MatMul kernel for this CPU and "
                         f"converts the {d} weights to {h} as its session loads, so every {d} call reads {h} weights, "
                         "and those layers are judged on those bytes."
                         for d, h in sorted({(r["stored"], r["held_as"]) for r in s["rows"] if r.get("held_as")})), ""]
        rows = []
        for r in s["rows"]:
            if r.get("measured"):
                rows.append([r["layer"], str(r["m"]), shape_text(r), str(r["count"]), ms(r["seconds"]),
                             f"{r['attained_gflops']:.2f}", f"{r['attained_gbps']:.1f}", f"{r['intensity']:.2f}",
                             _pct(r["roofline_fraction"]) + (" (kernel-limited)" if r["kernel_limited"] else ""),
                             r["bound"] + (" (contended)" if r.get("contended") else "")
                             + (" (machine slow)" if r.get("machine_slow") else "")])
            else:
                rows.append([r["layer"], str(r["m"]), shape_text(r), str(r["count"]),
                             f"*{ms(r['model_seconds'])} modelled*", "-", "-", "-", "-", r["bound"] + f" ({r['status']})"])
        md += md_table(["layer", "M", "KxN", "runs/token", "time/call", "GFLOP/s", "GB/s", "FLOP/byte",
                      "of roofline", "bound"], rows) + [""]
    return md


def _cache_words(cache: dict | None) -> str:
    """' (64 MiB, measured: ...)' from a run's cache decision (measure/cachesize.py); '' for a file without one."""
    if not cache or not cache.get("bytes"):
        return ""
    return f" ({cache['bytes'] / 2**20:.0f} MiB, {cache['how']})"


def _method_section(results: dict) -> list[str]:
    """How the points were checked and timed."""
    md: list[str] = []
    md += ["## Method", "",
           "- Each point: the backend's output for every weight copy is checked against a float64 reference "
           "(relative error within the dtype's tolerance) before any time counts; a wrong result is reported, not timed.",
           f"- Cold cache{'' if results.get('settings', {}).get('cold', True) else ' OFF (--warm: cache-resident, labelled warm)'}: "
           "calls rotate over distinct weight buffers (plus an untimed eviction read) so that at least 4x the "
           f"last-level cache{_cache_words(results.get('cache'))} passes between two uses of a buffer, as in decode, "
           "where each weight is read once per token; STREAM's arrays are 4x it too.",
           "- Timing: warm-up, then repeats until the spread (IQR/median) is below 3% or the point's budget is spent; "
           "the median counts; every sample is in results.json.",
           "- Bandwidth: STREAM-style kernels counted STREAM's way, best of the trials, GB/s = 1e9 bytes/s.", ""]
    return md


def _validation_section(results: dict, layers: LayerList) -> list[str]:
    """'Prediction checked': analyze's decode prediction against the real forward pass (rwkvprobe validate)."""
    checks = results.get("validation") or []
    if not checks:
        return []

    md = ["## Prediction checked", "",
          "`rwkvprobe validate` ran the real model (BlinkDL's reference forward pass, seeded random weights) token by "
          "token on this machine and compared its decode time with the prediction above.", ""]
    rows = []
    for v in checks:
        s = v["split"]
        rows.append([f"{v['backend']} {v['dtype']}", str(v["threads"]), f"{v['predicted']['decode_seconds'] * 1e3:.1f}",
                     f"{v['measured']['decode']['median'] * 1e3:.1f}", f"{v['predicted_over_measured']:.2f}",
                     "yes" if v["within_target"] else "**no**",
                     f"{s['matmul_forward_seconds'] * 1e3:.1f} / {s['matmul_predicted_seconds'] * 1e3:.1f}",
                     f"{s['rest_forward_seconds'] * 1e3:.1f} / {s['rest_predicted_seconds'] * 1e3:.2f}"])
    md += md_table(["backend dtype", "threads", "predicted ms/token", "measured ms/token", "predicted/measured",
                  f"within {TARGET:.0%}", "matmuls ms: forward / predicted", "rest ms: forward / modelled"], rows)
    md += [""]
    for v in checks:
        md += [f"- {line}" for line in summary_lines(v, layers.profile.name)]
    return md + [""]


def _memory_section(layers: LayerList, env: dict) -> list[str]:
    total = (env.get("memory") or {}).get("total_bytes")
    rows = []
    for d in ("fp32", "fp16", "int8", "int4"):
        need = layers.model_bytes(d)
        fits = "-" if not total else ("fits" if need < 0.8 * total else "does NOT fit in 80% of RAM")
        rows.append([d, f"{need / 1e9:.2f} GB", fits])
    head = [f"## Weights in RAM (this machine: {total / 1e9:.1f} GB)" if total else "## Weights in RAM", ""]
    return head + md_table(["weights at", "size", "vs this machine"], rows) + [
        "", f"{layers.total_params:,} parameters; int4 counted at a nominal half byte (no block scales).", ""]


def _what_if_section(verdict: dict) -> list[str]:
    rows = []
    for s in verdict["series"]:
        for q, v in s["model"].get("what_if", {}).items():
            rows.append([_label(s), q, f"{v['bytes_ratio']:.2f}x", f"{v['seconds_per_token'] * 1e3:.1f}",
                         f"{v['tokens_per_second']:.2f}", f"{v['speedup']:.2f}x"])
    if not rows:
        return []
    return ["## Quantization what-if (*modelled*)", "",
            "Each decode layer of the quantized kinds (`--quantize`; fp16: every layer) re-modelled with its weight bytes "
            "at the narrower format's real size (int8/int4 as blockwise MatMulNBits: scales and zero points included; "
            "head, low-rank and embedding kept float), keeping the layer's measured "
            "efficiency: bandwidth-bound layers scale with bytes, compute- and overhead-bound ones do not. "
            "Dequantization is taken as free, so these are upper bounds on the speed-up for kernels as far from "
            "their roofline as the float ones (a quantized kernel closer to its own beats them: the measured table "
            "says 'beaten'). (The seed article saw "
            "int4 about 4x faster than fp16 in rwkv.cpp on an RK3588: what a fully bandwidth-bound model predicts.)", ""] + \
        md_table(["from", "to", "fewer bytes", "decode ms/token", "tokens/s", "speed-up"], rows) + [""]


def _ceilings_section(results: dict) -> list[str]:
    if results.get("modelled"):
        md = ["## Modelled ceilings (from the device profile)", ""]
        rows = [[c["backend"], c["dtype"], f"{c['peak_gflops']:.1f}", ms(c["overhead_seconds"]) if c["overhead_seconds"] else "0",
                 c.get("source", "")] for c in results.get("ceilings", [])]
        md += md_table(["engine", "dtype", "GFLOP/s", "per-call overhead", "source"], rows) + [""]
        bw = results.get("bandwidth") or {}
        run = (bw.get("runs") or [{}])[0]
        md += [f"DRAM bandwidth (modelled): {run.get('kernels', {}).get('read', {}).get('best_gbps', 0):.1f} GB/s "
               f"({bw.get('source', '')}).", ""]
        return md
    md = ["## Measured ceilings", ""]
    rows = []
    for c in results.get("ceilings", []):
        rows.append([c["backend"], c["dtype"], f"{c['peak_gflops']:.1f}" if c.get("peak_gflops") else "failed",
                     f"{c['gemv_gbps']:.1f}" if c.get("gemv_gbps") else ("- (--quick)" if c.get("gemv_skipped") else "failed"),
                     ms(c["overhead_seconds"]) if c.get("overhead_seconds") is not None else "failed"])
    md += md_table(["backend", "dtype", "peak GFLOP/s (large matmul)", "GEMV GB/s (M=1, 4096x8192, cold)",
                  "per-call overhead (1x64x64, warm)"], rows) + [""]
    bw = results.get("bandwidth") or {}
    rows = []
    for run in bw.get("runs", []):
        for k, v in run.get("kernels", {}).items():
            rows.append([str(run.get("threads")), run.get("cluster") or "-", k, f"{v['best_gbps']:.2f}",
                         f"{v.get('avg_gbps', 0):.2f}"])
    if rows:
        engine = bw.get("engine", "") + (f", {bw['engine_tuning']}" if bw.get("engine_tuning") else "")
        md += [f"Memory bandwidth ({engine}, arrays of {bw.get('array_bytes', 0) / 1e6:.0f} MB, "
               f"best of {bw.get('trials')} trials{', ' + bw['when'] if bw.get('when') else ''}):", ""]
        md += md_table(["threads", "cluster", "kernel", "best GB/s", "average GB/s"], rows) + [""]
    probes = results.get("bandwidth_probes") or []
    if probes:
        md += ["The read bandwidth probed again during the run (same threads and CPUs, best of each probe's trials); "
               "the verdict's W is the best read figure of every probe" + (
                   ", this run's and the machine's earlier runs' (see the stability line)"
                   if (results.get("bandwidth_history") or {}).get("probes") else "") + ":", ""]
        md += md_table(["when", "s into the run", "read best GB/s", "read average GB/s", "values checked"],
                     [[p.get("when", ""), f"{p.get('at_seconds', 0):.0f}", f"{p['read_best_gbps']:.2f}",
                       f"{p.get('read_avg_gbps', 0):.2f}", "ok" if p.get("check_ok", True) else "WRONG"]
                      for p in probes]) + [""]
    return md


def shape_text(r: dict) -> str:
    """A layer row's KxN: a batched layer's call (Layer.call_shape) with the matrices it runs."""
    k, n, batch = r["k"], r["n"], r.get("batch", 1)
    return f"{k}x{n}" if batch == 1 else f"{k}x{n} ({batch} {k}x{n // batch} matrices in one call)"


def skipped_lines(results: dict, describe=lambda m: f"{m['backend']} {m['dtype']} M={m['m']} {m['k']}x{m['n']}") -> list[str]:
    """One markdown line per skipped series and per skipped, failed or wrong point."""
    lines = [f"- {s['backend']}{' ' + s['dtype'] if s.get('dtype') else ''}: {s['reason']}" for s in results.get("skipped", [])]
    for m in results.get("measurements", []):
        what = describe(m)
        if m.get("skipped"):
            lines.append(f"- {what}: skipped, {m['skipped']}")
        elif m.get("error"):
            lines.append(f"- {what}: failed, {m['error']}")
        elif m.get("check") and not m["check"]["ok"]:
            lines.append(f"- {what}: **WRONG RESULT**, {m['check'].get('detail', '')}")
    return lines


def _skipped_section(results: dict) -> list[str]:
    lines = skipped_lines(results)
    return (["## Skipped and failed", ""] + lines + [""]) if lines else []


def _environment_section(results: dict) -> list[str]:
    if results.get("device"):
        dev = results["device"]
        rows = [[c.get("name", ""), f"{c.get('cores')}x {c.get('core')} up to {c.get('max_mhz')} MHz ({c.get('source')})"]
                for c in dev.get("cpu_clusters", [])]
        rows.append(["DRAM", f"{dev['dram_theoretical_gbps']['value']} GB/s theoretical ({dev['dram_theoretical_gbps']['source']})"])
        rows.append(["NPU", f"{dev['npu_cores']} cores at {dev['npu_clock_mhz']['value']:.0f} MHz"])
        return ["## Device (modelled)", ""] + md_table(["", ""], rows) + [""]
    s = results.get("settings", {})
    return environment_section(results, f"threads {s.get('threads')}, cpus {s.get('pinned_cpus') or 'not pinned'}, "
                                        f"tokens {s.get('tokens')}, {'cold' if s.get('cold', True) else 'warm'} cache")


def verdict_lines(results: dict) -> list[str]:
    """The verdict as plain terminal lines (markdown emphasis removed)."""
    layers, verdict = verdict_of(results)
    return [s.replace("**", "") for s in verdict_sentences(verdict, layers, results)]
