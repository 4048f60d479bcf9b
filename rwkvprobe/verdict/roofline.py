"""Verdict: per-layer roofline classification and model-level estimates, from measured figures only.

The model of one matmul call on a backend is  t = t0 + max(FLOPs / P, bytes / W)  where
- P  is the backend's measured peak GFLOP/s at that dtype (large matmuls),
- W  is the machine's measured DRAM bandwidth (the read kernel of the bandwidth probe, same threads),
- t0 is the backend's measured fixed cost of a call (a tiny, cache-resident matmul).

Classification rule (written into the report):
- overhead-bound  when t0 >= max(FLOPs/P, bytes/W): the fixed per-call cost is the larger part;
- compute-bound   when FLOPs/P > bytes/W (arithmetic intensity above the ridge point P/W);
- bandwidth-bound otherwise.
"Fraction of roofline" is the model time over the measured time, t0 + max(FLOPs/P, bytes/W) / t: 1.0 for a
call as fast as the measured ceilings allow (for t0 -> 0 it is attained GFLOP/s over min(P, intensity x W)).
A layer far below 1 is limited by its kernel, not by the ceiling it is classed under.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from rwkvprobe.errors import InputError
from rwkvprobe.measure.bandwidth import BURSTY, best_read_gbps, read_probes, sustained_read_gbps
from rwkvprobe.measure.contention import CANARY_SLOW, canary_best, canary_ratio
from rwkvprobe.measure.nonmatmul import block_dtype
from rwkvprobe.measure.points import point_seconds
from rwkvprobe.model.cost import roofline_seconds
from rwkvprobe.model.profile import DTYPE_BYTES, LayerList, activation_bytes_of, layers_from_json, weight_bytes_of
from rwkvprobe.model.quant import DEFAULT_FORMATS, DEFAULT_QUANTIZE, FORMATS, quantize_kinds
from rwkvprobe.model.quant import QUANT_DTYPES as QUANTIZED_ROW_DTYPES  # may keep some matrices float
from rwkvprobe.verdict.fit import NOISE_Z, SIGMA_FLOOR, rel_sigma

CLASSES = ("compute-bound", "bandwidth-bound", "overhead-bound")
RULE = ("overhead-bound when the backend's fixed per-call cost t0 >= max(FLOPs/P, bytes/W); otherwise "
        "compute-bound when FLOPs/P > bytes/W (arithmetic intensity above the ridge point P/W), else "
        "bandwidth-bound. P: the backend's measured peak GFLOP/s at that dtype; W: measured DRAM bandwidth "
        "(read kernel, same threads); t0: measured time of a tiny cache-resident matmul. Fraction of roofline: "
        "(t0 + max(FLOPs/P, bytes/W)) / measured time; below 50% the layer is marked kernel-limited (the time by "
        "bound counts a layer between 40% and 60% partly as kernel-limited, in proportion).")
#: below this fraction of its roofline a layer is flagged "kernel-limited"
KERNEL_LIMITED = 0.5
#: the verdict's time by bound counts a layer within this of KERNEL_LIMITED partly as kernel-limited, in proportion
#: (all of it at 0.4 of its roofline, none at 0.6): a layer at the line is neither clearly, and a hard line let a
#: 0.56 in one run and a 0.50 in the next move a third of a decode's time between two bounds
KERNEL_BAND = 0.1
#: a measured layer may reach this multiple of a measured ceiling (noise) before the ceiling is raised
CEILING_TOLERANCE = 1.05
#: the summary's name for measured time in layers below KERNEL_LIMITED of their bound: their kernel (a slow
#: GEMV, dequantization), not the ceiling they are classed under, holds them back
KERNEL = "kernel-limited"
#: the buckets of the verdict's "matmul time by bound"
BOUNDS = CLASSES + (KERNEL,)
FLOAT_DTYPES = ("fp32", "fp16", "bf16")


def classify(flops: float, nbytes: float, peak_flops: float, bandwidth: float, overhead: float) -> str:
    """The bound of one call by the rule above (all figures in SI base units: FLOP/s, bytes/s, s)."""
    t_compute = flops / peak_flops
    t_memory = nbytes / bandwidth
    if overhead >= max(t_compute, t_memory):
        return "overhead-bound"
    return "compute-bound" if t_compute > t_memory else "bandwidth-bound"


def model_seconds(flops: float, nbytes: float, peak_flops: float, bandwidth: float, overhead: float) -> float:
    """The roofline model time of one call (model.cost, the one formula)."""
    return float(roofline_seconds(flops, nbytes, peak_flops, bandwidth, overhead))


def layer_verdict(flops: float, nbytes: float, seconds: float, peak_flops: float, bandwidth: float,
                  overhead: float) -> dict:
    """Everything the report shows for one measured layer call."""
    intensity = flops / nbytes
    attained = flops / seconds
    model = model_seconds(flops, nbytes, peak_flops, bandwidth, overhead)
    fraction = model / seconds
    return {
        "seconds": seconds,
        "flops": flops,
        "bytes": nbytes,
        "intensity": intensity,
        "attained_gflops": attained / 1e9,
        "attained_gbps": nbytes / seconds / 1e9,
        "roofline_fraction": fraction,
        "model_seconds": model,
        "bound": classify(flops, nbytes, peak_flops, bandwidth, overhead),
        "kernel_limited": fraction < KERNEL_LIMITED,
        "t_compute": flops / peak_flops,
        "t_memory": nbytes / bandwidth,
        "t_overhead": overhead,
    }


def non_matmul_bytes(layers: LayerList, dtype: str) -> float:
    """Per-token bytes of the work outside the weight matmuls (modelled lower bound).

    v5-v7 keep an H x S x S fp32 state per block, read and written every token (2 x C x S x 4 bytes);
    every version reads its vector parameters (norms, mixes, decays) once per token.
    """
    p = layers.profile
    if p.version is None:
        return 0.0
    state = 2 * p.n_embd * p.head_size * 4 * p.n_layer if p.version >= 5 else 2 * 5 * p.n_embd * 4 * p.n_layer
    return state + layers.other_params * activation_bytes_of(dtype)


def build_verdict(results: dict, layers: LayerList) -> dict:
    """Per-layer verdicts, model-level figures, what-ifs: a JSON-ready dict for report and plots."""
    bw = _bandwidth_bps(results)
    series: dict[tuple[str, str], dict] = {}
    warnings: list[str] = []
    whatif = {tuple(x) for x in results.get("settings", {}).get("whatif_series") or []}
    by_key = {(p["backend"], p["dtype"], p["m"], p["k"], p["n"]): p for p in results.get("measurements", [])}
    sustained = sustained_read_gbps(results)
    # float series first: a quantized series' rows kept at the float type are judged on that series' ceilings as it
    # holds them (hold_ceilings), not as first measured; the series keep the order of results["ceilings"]
    held: dict[tuple[str, str], tuple[float, float]] = {}
    ceilings = results.get("ceilings", [])
    for c in sorted(ceilings, key=lambda c: c["dtype"] in QUANTIZED_ROW_DTYPES):
        if not c.get("peak_gflops") or c.get("overhead_seconds") is None or bw is None or c.get("left_out"):
            continue
        P, t0 = c["peak_gflops"] * 1e9, c["overhead_seconds"]
        key = (c["backend"], c["dtype"])
        # a series measured on another machine (a board driven over adb) carries that machine's bandwidth
        bw_s = c["bandwidth_gbps"] * 1e9 if c.get("bandwidth_gbps") else bw
        # a board's series keep its own bandwidth; this machine's layers are judged at its sustained bandwidth
        local = None if c.get("bandwidth_gbps") else sustained
        rows = _rows(results, layers, c, by_key, P, bw_s, t0, local, held)
        adjustments = [] if c.get("modelled") else hold_ceilings(rows, P, bw_s, t0)
        if adjustments:
            P, bw_s, t0 = adjustments[-1]["P"], adjustments[-1]["W"], adjustments[-1]["t0"]
            rows = _rows(results, layers, c, by_key, P, bw_s, t0, local, held)
            warnings += [f"{c['backend']} {c['dtype']}: {a['text']}" for a in adjustments]
        held[key] = (P, t0)
        if key in whatif:  # measured for the what-if: decode shapes only
            rows = [r for r in rows if r["m"] == 1]
        series[key] = {"backend": c["backend"], "dtype": c["dtype"], "peak_gflops": P / 1e9,
                       "bandwidth_gbps": bw_s / 1e9, "overhead_seconds": t0, "gemv_gbps": c.get("gemv_gbps"),
                       "sustained_gbps": min(local, bw_s / 1e9) if local else None,
                       "measured_ceilings": {"peak_gflops": c["peak_gflops"], "overhead_seconds": c["overhead_seconds"],
                                             "bandwidth_gbps": (c.get("bandwidth_gbps") or bw / 1e9)},
                       "ceiling_adjustments": [{k: v for k, v in a.items() if k not in ("P", "W", "t0")}
                                               for a in adjustments],
                       "whatif": key in whatif, "rows": rows}
        kept = [r for r in rows if r.get("stored_as")]
        if kept:  # a backend's own rule (ggml: rwkv.cpp's) already kept these rows at its float type
            series[key].update(float_dtype=kept[0]["stored_as"],
                               quantized_kinds=sorted({r["kind"] for r in rows if not r.get("stored_as")}),
                               float_kinds=sorted({r["kind"] for r in kept}))
    order = [(c["backend"], c["dtype"]) for c in ceilings]
    series = {key: series[key] for key in sorted(series, key=order.index)}
    warnings += _keep_float(series, results)
    for s in series.values():
        s["model"] = _model_level(s["rows"], layers, s.get("float_dtype") or s["dtype"], s["bandwidth_gbps"] * 1e9,
                                  s["peak_gflops"] * 1e9, s["overhead_seconds"], results,
                                  nonmatmul_entry(results, s["backend"], s["dtype"]), whatif=s["whatif"])
    verdict: dict[str, Any] = {"bandwidth_gbps": bw / 1e9 if bw else None, "rule": RULE,
                               "sustained_gbps": sustained, "probe_count": len(read_probes(results)),
                               "earlier_probe_count": len((results.get("bandwidth_history") or {}).get("probes", [])),
                               "series": list(series.values()), "ceiling_warnings": warnings}
    # computed once here, rendered by the report: quantized decode beside its bytes-only what-if, and the
    # smaller-weights figures (measured first)
    verdict["quant"] = quant_comparison(verdict, results)
    verdict["smaller_weights"] = measured_what_if(verdict, results)
    return verdict


def _rows(results: dict, layers: LayerList, c: dict, by_key: dict, P: float, bw_s: float, t0: float,
          sustained: float | None = None, held: dict[tuple[str, str], tuple[float, float]] | None = None) -> list[dict]:
    """One row per layer and token count of a series: measured verdict, else the model's time (labelled).

    A measured layer is judged at the machine's sustained DRAM bandwidth (``sustained``, GB/s: see
    bandwidth.sustained_read_gbps) where the run probed often enough to know it, or at what it read itself where that is
    more, never above the series' W.

    A backend that keeps some kinds at a float type in its quantized series (ggml, rwkv.cpp's rule) takes
    those rows from its float series (``stored_as``), judged on that series' own peak and overhead: as that series
    holds them (``held``: (P, t0) by series, after hold_ceilings), else as measured."""
    rows = []
    # the float type this backend's points say it held a dtype's weights at, where not the dtype
    held_types = {key[1]: p["weight_dtype"] for key, p in by_key.items()
                  if key[0] == c["backend"] and p.get("weight_dtype")}
    desc = (results.get("backends") or {}).get(c["backend"]) or {}
    keep_float = desc.get("float_dtype") if c["dtype"] in QUANTIZED_ROW_DTYPES and desc.get("float_dtype") else None
    q_kinds = quantize_kinds(results.get("settings", {}).get("quantize"), desc)
    float_c = next((f for f in results.get("ceilings", []) if (f["backend"], f["dtype"]) == (c["backend"], keep_float)
                    and f.get("peak_gflops") and f.get("overhead_seconds") is not None), None)
    canary = canary_best(results.get("measurements", []), results.get("canary_reference_seconds"))
    for m in results.get("settings", {}).get("tokens", [1]):
        for layer in layers.chunk_layers(m):  # a chunk runs the head for its last token only (its M = 1 row)
            stored, P_r, t0_r = c["dtype"], P, t0
            if keep_float and layer.kind not in q_kinds:  # this matrix stays at the float type
                stored = keep_float
                if float_c:
                    P_r, t0_r = (held or {}).get((c["backend"], keep_float),
                                                 (float_c["peak_gflops"] * 1e9, float_c["overhead_seconds"]))
            k, n = layer.call_shape  # a batched layer's matrices, timed as the one call that runs them
            p = by_key.get((c["backend"], stored, m, k, n))
            row = {"layer": layer.name, "kind": layer.kind, "k": k, "n": n, "m": m,
                   "count": layer.calls, "measured": False, "status": "not measured", "stored": stored,
                   "weight_bytes": k * n * ((p or {}).get("bytes_per_weight") or weight_bytes_of(held_types.get(stored, stored)))}
            if layer.batch != 1:
                row["batch"] = layer.batch
            if stored != c["dtype"]:
                row.update(stored_as=stored, kept_float=True)
            if p is not None:
                if p.get("weight_dtype"):  # the backend held it at another float type (its bytes count there)
                    row["held_as"] = p["weight_dtype"]
                row["status"] = point_status(p)
                if (p.get("contention") or {}).get("contended"):
                    row["contended"] = True
                if (canary_ratio(p, canary) or 0.0) >= CANARY_SLOW:  # the machine itself ran slow around it
                    row["machine_slow"] = True
            t = point_seconds(p) if p else None
            flops, nbytes = (p["flops"], p["bytes"]) if p else _work(m, k, n, stored, held_types.get(stored, stored))
            if t is not None:
                if sustained:
                    row["sustained_gbps"] = min(sustained, bw_s / 1e9)
                row.update(layer_verdict(flops, nbytes, t, P_r, row_bandwidth(row, bw_s, t0_r, nbytes, t), t0_r),
                           measured=True)
            else:  # not measured (skipped, failed or wrong): the model's time, labelled modelled
                row.update({"seconds": None, "flops": flops, "bytes": nbytes,
                            "model_seconds": model_seconds(flops, nbytes, P_r, bw_s, t0_r),
                            "bound": classify(flops, nbytes, P_r, bw_s, t0_r)})
            rows.append(row)
    return rows


def row_bandwidth(row: dict, W: float, t0: float, nbytes: float | None = None, seconds: float | None = None) -> float:
    """The DRAM bandwidth a measured row is judged at: the series' W, or, where the run knows the machine's
    sustained bandwidth (``sustained_gbps``, below W on a machine whose bandwidth comes in bursts), that, but never
    less than the row itself needed (bytes over its time less the per-call overhead: a layer timed in a burst is
    judged at what it read) nor more than W."""
    local = row.get("sustained_gbps")
    if not local:
        return W
    nbytes = row["bytes"] if nbytes is None else nbytes
    seconds = row["seconds"] if seconds is None else seconds
    need = nbytes / (seconds - t0) if seconds > t0 else W
    return min(W, max(local * 1e9, need))


def kernel_share(row: dict) -> float:
    """How much of a measured row's time the verdict counts as kernel-limited: all of it at KERNEL_LIMITED -
    KERNEL_BAND of its roofline or below, none at KERNEL_LIMITED + KERNEL_BAND or above, in proportion between."""
    f = row.get("roofline_fraction")
    if f is None or not row.get("measured"):
        return 0.0
    return min(1.0, max(0.0, (KERNEL_LIMITED + KERNEL_BAND - f) / (2 * KERNEL_BAND)))


def hold_ceilings(rows: list[dict], P: float, W: float, t0: float, tolerance: float = CEILING_TOLERANCE) -> list[dict]:
    """Ceilings consistent with the layers they judge: what to change, with one warning each.

    A measured layer that attains more than ``tolerance`` x a ceiling (bytes/s over W, FLOP/s over P)
    proves the ceiling low (a disturbed probe, a kernel better than the probe's): the ceiling is raised
    to what the layer attained. A layer faster than t0 + max(FLOPs/P, bytes/W) by more than the
    tolerance proves the fixed per-call cost t0 too high for this series: t0 is lowered to the largest
    value every measured layer allows. After these steps no measured layer shows more than 100% of its
    roofline. Returns one dict per change (``text`` names the layer and both figures; ``P``, ``W``,
    ``t0`` the ceilings after it); empty when the ceilings hold.
    """
    # DRAM bandwidth is the machine's: every measured row counts against W. Compute and overhead are the
    # kernel's: rows kept at another type (ggml's f16 rows in a quantized series) answer to that series' P, t0
    every = [r for r in rows if r.get("measured") and r.get("seconds")]
    measured = [r for r in every if not r.get("stored_as")]
    if not every:
        return []
    out = []

    def name(r):
        return f"layer {r['layer']} (M={r['m']}, {r['k']}x{r['n']})"

    ceilings = {"bandwidth": W, "compute": P}
    # (ceiling, the row's work it is judged on, unit, how a layer attaining it is said, the ceiling's own name)
    for ceiling, work, unit, verb, measured_as in (
            ("bandwidth", "bytes", "GB/s", "read", "the measured DRAM bandwidth of {} (best of every probe of the run)"),
            ("compute", "flops", "GFLOP/s", "ran at", "the measured peak of {}")):
        judged = every if ceiling == "bandwidth" else measured
        if not judged:
            continue
        top = max(judged, key=lambda r: r[work] / r["seconds"])
        attained, limit = top[work] / top["seconds"], ceilings[ceiling]
        if attained > tolerance * limit:
            out.append({"ceiling": ceiling, "layer": top["layer"], "m": top["m"], "unit": unit,
                        "measured": limit / 1e9, "attained": attained / 1e9,
                        "text": f"{name(top)} {verb} {attained / 1e9:.1f} {unit}, {attained / limit - 1:.0%} above "
                                + measured_as.format(f"{limit / 1e9:.1f} {unit}")
                                + f": its {ceiling} ceiling is raised to {attained / 1e9:.1f} {unit}"})
            ceilings[ceiling] = attained
    W, P = ceilings["bandwidth"], ceilings["compute"]
    if not measured:
        for a in out:
            a.update(P=P, W=W, t0=t0)
        return out
    # the largest t0 that keeps every measured layer within the tolerance of its roofline
    slack = [(tolerance * r["seconds"] - max(r["flops"] / P, r["bytes"] / row_bandwidth(r, W, t0)), r) for r in measured]
    worst = max(measured, key=lambda r: model_seconds(r["flops"], r["bytes"], P, row_bandwidth(r, W, t0), t0) / r["seconds"])
    if model_seconds(worst["flops"], worst["bytes"], P, row_bandwidth(worst, W, t0), t0) > tolerance * worst["seconds"]:
        allowed, limiting = min(slack, key=lambda x: x[0])
        allowed = max(0.0, allowed)
        out.append({"ceiling": "per-call overhead", "layer": limiting["layer"], "m": limiting["m"], "unit": "s",
                    "measured": t0, "attained": allowed,
                    "text": f"{name(limiting)} took {_us(limiting['seconds'])}, less than the per-call overhead "
                            f"({_us(t0)}) plus its compute or memory time: this series' overhead term is lowered "
                            f"to {_us(allowed)}"})
        t0 = allowed
    for a in out:
        a.update(P=P, W=W, t0=t0)
    return out


def _us(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} µs"


#: at least this many points timed beside the canary before their spread counts (machine_sigma)
MACHINE_SIGMA_POINTS = 8


def machine_sigma(results: dict) -> float | None:
    """How much the machine's own speed moves from one point's window to the next, as a relative sigma: the robust
    spread (1.4826 x the median absolute value, over the square root of 2) of the change in the log of the canary
    (contention.canary: a fixed two-thread matmul timed beside each point) between points timed one after the
    other; None with fewer than MACHINE_SIGMA_POINTS of them.

    A point's samples show the noise inside its window, not where the window fell among the host's phases; series are
    compared shape by shape, their points timed close together, so the change between neighbouring windows is the
    drift that separates them (a phase that lasts a run moves every series alike, and the spread of the canary over
    the whole run, 0.05-0.38 in log on the dev VM, would tie series 40% apart). Two quick runs of rwkv-0b4 there named
    ggml q8_0 the fastest (27.3 ms a token against q4_0's 29.0) and then q4_0 (29.2 against 31.0), neither with a
    tie: their points' sigmas sat at the 2% floor, while this drift was 3% and 10%."""
    timed = sorted((p["at"], x) for p in results.get("measurements") or []
                   if p.get("at") and (x := (p.get("contention") or {}).get("canary_seconds")))
    if len(timed) < MACHINE_SIGMA_POINTS:
        return None
    steps = [abs(math.log(b / a)) for (_, a), (_, b) in zip(timed, timed[1:])]
    return 1.4826 * statistics.median(steps) / math.sqrt(2)


def decode_rel_sigma(s: dict, results: dict) -> float:
    """Relative uncertainty of a series' measured decode matmul time, from its points' own noise and the machine's.

    Each layer's median carries fit.rel_sigma (its samples' spread, floored at 2%), and at least the machine's drift
    from one point's window to the next (machine_sigma); layers add up as independent."""
    timing = {(p["backend"], p["dtype"], p["m"], p["k"], p["n"]): p.get("timing")
              for p in results.get("measurements", [])}
    drift = machine_sigma(results) or 0.0
    var, total = 0.0, 0.0
    for r in s["rows"]:
        if r["m"] != 1:
            continue
        t = row_seconds(r) * r["count"]
        sig = (max(drift, rel_sigma(timing.get((s["backend"], s["dtype"], 1, r["k"], r["n"]))))
               if r.get("measured") else 0.25)
        var += (t * sig) ** 2
        total += t
    return max(SIGMA_FLOOR, (var ** 0.5) / total) if total else SIGMA_FLOOR


def within_noise(a: dict, t_a: float, b: dict, t_b: float, results: dict) -> bool:
    """Series ``a`` and ``b``, whose decodes take ``t_a`` and ``t_b``, differ by no more than NOISE_Z combined sigmas
    (decode_rel_sigma): neither can be said to be the faster."""
    return abs(math.log(t_a / t_b)) <= NOISE_Z * math.hypot(decode_rel_sigma(a, results), decode_rel_sigma(b, results))


#: the float series a quantized series' unquantized matrices are kept at where the backend's float series are tied
#: (float_base): the quantized kernels' activation type, as where no float series was measured
TIED_FLOAT = "fp32"


def float_base(floats: list[tuple[float, dict]], results: dict) -> dict | None:
    """The float series of a backend that its quantized series keep their unquantized matrices at and are compared
    with: the fastest of ``floats`` ((decode seconds, series)), or the TIED_FLOAT series where it is tied with that
    within noise (within_noise). onnxruntime fp16 and fp32 ran within a few percent of each other on this project's
    VM, and the fastest alone was fp32 in one quick run and fp16 in the next: the same command gave the int4-a8
    series 0.518 GB of weights a token (its head at fp32) and then 0.356 GB, compared with another series."""
    if not floats:
        return None
    t_best, best = min(floats, key=lambda x: x[0])
    tied = [s for t, s in floats if s["dtype"] == TIED_FLOAT and within_noise(best, t_best, s, t, results)]
    return tied[0] if tied else best


def _keep_float(series: dict, results: dict) -> list[str]:
    """A quantized series is the model as it would run: the kinds not quantized stay float.

    (Not for the RK3588 NPU, measured or modelled: its int8 graphs quantize every layer.) Layers of the
    kinds in ``settings.quantize`` keep the quantized format's rows; the others (by default
    the head and the low-rank matrices) take the rows of the same backend's fastest float series (fp32 where
    that is tied with the fastest: float_base), with their float bytes, so that every byte and GB/s figure of the series counts the weights a token really
    reads. Without a float series of that backend they are modelled at fp32 (the activation type of the
    quantized kernels) and labelled so.

    A float row read faster than the quantized series' own DRAM ceiling (its float series raised its own, a
    disturbed probe) raises this series' ceiling too, with its own warning naming the layer: returns the warnings.
    """
    quantize = set(results.get("settings", {}).get("quantize") or DEFAULT_QUANTIZE)
    warnings: list[str] = []
    decode_time = {}
    for key, s in series.items():
        if s["dtype"] in FLOAT_DTYPES:
            rows = [r for r in s["rows"] if r["m"] == 1]
            if rows:
                decode_time[key] = sum(row_seconds(r) * r["count"] for r in rows)
    for (backend, dtype), s in series.items():
        # the RK3588 NPU (measured, or a modelled device) quantizes the whole graph (w8a8, head included)
        if dtype in FLOAT_DTYPES or results.get("device") or backend.split("[")[0] in ("rknnlite", "rknn"):
            continue
        if s.get("float_dtype"):  # its rows are already at their real types (ggml: rwkv.cpp's rule, _rows)
            continue
        base = float_base([(decode_time[(backend, d)], series[(backend, d)]) for d in FLOAT_DTYPES
                           if (backend, d) in decode_time], results)
        base_rows = {(r["layer"], r["m"]): r for r in base["rows"]} if base else {}
        P, bw, t0 = s["peak_gflops"] * 1e9, s["bandwidth_gbps"] * 1e9, s["overhead_seconds"]
        rows = []
        for r in s["rows"]:
            if r["kind"] in quantize:
                rows.append(r)
            elif (r["layer"], r["m"]) in base_rows:
                rows.append(dict(base_rows[(r["layer"], r["m"])], kept_float=True))
            else:
                flops, nbytes = _work(r["m"], r["k"], r["n"], "fp32")
                rows.append({**{k: r[k] for k in ("layer", "kind", "k", "n", "m", "count")},
                             "measured": False, "kept_float": True, "stored": "fp32",
                             "status": f"kept float: no float {backend} series measured, modelled at fp32",
                             "weight_bytes": r["k"] * r["n"] * 4.0, "seconds": None, "flops": flops, "bytes": nbytes,
                             "model_seconds": model_seconds(flops, nbytes, P, bw, t0),
                             "bound": classify(flops, nbytes, P, bw, t0)})
        s["rows"] = rows
        warnings += _hold_bandwidth_for_kept_rows(s, base)
        s["float_dtype"] = base["dtype"] if base else "fp32"
        s["quantized_kinds"] = sorted(quantize & {r["kind"] for r in rows})
        s["float_kinds"] = sorted({r["kind"] for r in rows if r.get("kept_float")})
    return warnings


def _hold_bandwidth_for_kept_rows(s: dict, base: dict | None) -> list[str]:
    """DRAM bandwidth is the machine's: a row kept float in a quantized series (its float series' own row) counts
    against this series' W too. hold_ceilings' rule, for rows that came in after it ran: given as rows of another
    type (``stored_as``), they answer to W only, not to this series' peak or per-call overhead."""
    kept = [dict(r, stored_as=base["dtype"]) for r in s["rows"] if base is not None and r.get("kept_float")]
    adjustments = hold_ceilings(kept, s["peak_gflops"] * 1e9, s["bandwidth_gbps"] * 1e9, s["overhead_seconds"])
    for a in adjustments:
        s["bandwidth_gbps"] = a["W"] / 1e9
        s["ceiling_adjustments"].append({k: v for k, v in a.items() if k not in ("P", "W", "t0")})
    return [f"{s['backend']} {s['dtype']}: {a['text']}" for a in adjustments]


def point_status(p: dict) -> str:
    if p.get("error"):
        return "failed: " + p["error"]
    if p.get("skipped"):
        return "skipped: " + p["skipped"]
    if p.get("check") and not p["check"]["ok"]:
        return "WRONG RESULT: " + p["check"].get("detail", "")
    if p.get("timing") and not p.get("check"):
        return "not checked"
    return "measured" if p.get("timing") else "not measured"


def _work(m: int, k: int, n: int, dtype: str, held: str | None = None) -> tuple[float, float]:
    """FLOPs and bytes of a call at ``dtype``, its weight held at ``held`` (another float type) where given."""
    a = activation_bytes_of(dtype)
    return 2.0 * m * k * n, k * n * weight_bytes_of(held or dtype) + m * k * a + m * n * a


def _bandwidth_bps(results: dict) -> float | None:
    """W: the best read GB/s over every bandwidth probe of the run (before, between and after the layers)."""

    best = best_read_gbps(results)
    return best * 1e9 if best else None


def nonmatmul_entry(results: dict, backend: str, dtype: str) -> dict | None:
    """The measured non-matmul block of a series (analyze times it for torch; see nonmatmul.py).

    Quantized-weight series run their non-matmul work at the float activation type: they use the fp32 block."""

    for x in results.get("nonmatmul") or []:
        if x.get("backend") == backend and x.get("dtype") == block_dtype(dtype, backend) and x.get("seconds_per_token"):
            return x
    return None


#: a decode is called by one bound only when that bound's layers hold this much more of its matmul time than the
#: next bound's (in shares of the matmul time)
LEAD = 0.15


def bound_lead(share_by_bound: dict[str, float]) -> float:
    """How far the largest share of a decode's matmul time by bound leads the next (all of it with one bound)."""
    ranked = sorted(share_by_bound.values(), reverse=True) + [0.0, 0.0]
    return ranked[0] - ranked[1]


def main_bound(share_by_bound: dict[str, float]) -> str | None:
    """The bound a decode is called by: the one whose layers hold the most matmul time, when it leads the next by
    at least LEAD; None (mixed) otherwise. A near tie (42% against 38%) names one bound in one run and the
    other in the next; a clear lead (49% against 33%, 59% against 41%) names the same bound in both."""
    if not share_by_bound:
        return None
    top = max(share_by_bound, key=lambda k: share_by_bound[k])
    return top if bound_lead(share_by_bound) >= LEAD else None


def best_series(series: list[dict]) -> dict | None:
    """The fastest decode (the verdict's headline), preferring series whose every layer was measured over partly
    modelled ones; what-if series never."""
    timed = [s for s in series if s["model"].get("decode") and not s.get("whatif")]
    if not timed:
        return None
    return min(timed, key=lambda s: (not s["model"]["decode"]["fully_measured"],
                                     s["model"]["decode"]["seconds_per_token"]))


def _decode_points(series: dict) -> dict[tuple, tuple[float, float]]:
    """A series' measured decode points: {point key (backend, dtype, m, k, n): (seconds a token, kernel share)}, in
    row order. A row kept at another type (ggml's f16 rows in a q4_0 series) names the point it was read from; rows
    of one point add their time."""
    points: dict[tuple, tuple[float, float]] = {}
    for x in series["rows"]:
        if x["m"] == 1 and x.get("measured"):
            key = (series["backend"], x["stored"], x["m"], x["k"], x["n"])
            points[key] = (points.get(key, (0.0, 0.0))[0] + x["seconds"] * x["count"], kernel_share(x))
    return points


def _headline_decode_points(results: dict, layers: LayerList) -> dict[tuple, tuple[float, float]]:
    """The fastest series' measured decode points (_decode_points; none without a fastest series)."""
    best = best_series(build_verdict(results, layers)["series"])
    return {} if best is None else _decode_points(best)


def near_line_points(results: dict, layers: LayerList) -> list[tuple[tuple, float]]:
    """The headline's points whose verdict sits on the kernel-limited line: the fastest series' decode points with
    a kernel_share strictly between 0 and 1, as (point key (backend, dtype, m, k, n), kernel share), the most time
    a token first."""
    near = [(key, t, share) for key, (t, share) in _headline_decode_points(results, layers).items() if 0.0 < share < 1.0]
    return [(key, share) for key, _, share in sorted(near, key=lambda x: -x[1])]


#: a headline decode point carrying at least this share of its series' matmul time a token is measured twice
HEAVY_SHARE = 0.10


def heavy_points(results: dict, layers: LayerList) -> list[tuple[tuple, float]]:
    """The headline's heaviest points: the fastest series' decode points carrying at least HEAVY_SHARE of its
    matmul time a token, as (point key, share), the most time first. One timing of such a point moves the headline
    with it: a ggml f16 head (a third of a q4_0 decode) timed at 8.2 ms in one quick run (five calls: 3.7, 7.7,
    8.2, 16, 24 ms) and 3.3 in the next turned "compute-bound" into "mixed"."""
    points = _headline_decode_points(results, layers)
    total = sum(t for t, _ in points.values())
    heavy = [(key, t / total) for key, (t, _) in points.items() if t >= HEAVY_SHARE * total]
    return sorted(heavy, key=lambda kv: -kv[1])


def series_heavy_points(results: dict, layers: LayerList) -> list[tuple[tuple, float]]:
    """Every series' heaviest decode points (what-if series included): those carrying at least HEAVY_SHARE of their
    series' matmul time a token, as (point key, share), taken in turns: each series' heaviest, the largest share
    first, then each one's second, and so on. A point two series share (ggml's f16 head in its q4_0 and q8_0 series)
    comes once. The same command twice should give each series' decode within 10% (issue 14); in one pair of quick
    runs of rwkv-0b4 onnxruntime int4-a8 read 27.5 and 31.2 ms a token, its ffn.value point alone 3.99 and 5.17 ms:
    one timing of a tenth of a decode is one draw of the machine's mode, and only the headline's were drawn twice."""
    ranked = []
    for series in build_verdict(results, layers)["series"]:
        points = _decode_points(series)
        total = sum(t for t, _ in points.values())
        heavy = sorted(((key, t / total) for key, (t, _) in points.items() if total and t >= HEAVY_SHARE * total),
                       key=lambda kv: -kv[1])
        ranked += [(rank, -share, key) for rank, (key, share) in enumerate(heavy)]
    out: dict[tuple, float] = {}  # in turn order; a shared point keeps its first place
    for _, minus_share, key in sorted(ranked):
        out.setdefault(key, -minus_share)
    return list(out.items())


def row_seconds(r: dict) -> float:
    """The one rule for a layer row's time: measured where measured, else the roofline model's time (every
    figure built from a modelled row is labelled so where it is shown)."""
    return r["seconds"] if r.get("measured") else r["model_seconds"]


def _model_level(rows: list[dict], layers: LayerList, dtype: str, bw: float, P: float, t0: float,
                 results: dict, nonmatmul: dict | None = None, whatif: bool = False) -> dict:
    """Decode ms/token, prefill tokens/s, share by kind and bound and the int8/int4 what-if, for one series.

    ``dtype`` is the float type of the series' activations and of its embedding row (for a quantized series,
    the float type its unquantized layers keep). Weight bytes count every row at its real size (quantized
    rows with their scales and zero points). Measured time in layers below KERNEL_LIMITED of their roofline
    counts as kernel-limited, whatever ceiling they are classed under; within KERNEL_BAND of that line, in part
    (kernel_share).

    The work outside the weight matmuls is the measured non-matmul block times n_layer where analyze
    timed it, else modelled as its bytes over the DRAM bandwidth (a lower bound)."""
    out: dict = {}
    decode = [r for r in rows if r["m"] == 1]
    if decode:
        matmul = sum(row_seconds(r) * r["count"] for r in decode)
        modelled_part = sum(r["model_seconds"] * r["count"] for r in decode if not r["measured"])
        other = nonmatmul["seconds_per_token"] if nonmatmul else non_matmul_bytes(layers, dtype) / bw
        total = matmul + other
        share: dict[str, float] = defaultdict(float)
        bounds: dict[str, float] = defaultdict(float)
        limited_time = limited_bytes = 0.0
        for r in decode:
            t = row_seconds(r) * r["count"]
            share[r["kind"]] += t
            kl = kernel_share(r)  # a layer near the kernel-limited line counts partly each way
            if kl:
                bounds[KERNEL] += kl * t
                limited_time += kl * t
                limited_bytes += kl * r["weight_bytes"] * r["count"]
            if kl < 1.0:
                bounds[r["bound"]] += (1.0 - kl) * t
        weight_bytes = sum(r["weight_bytes"] * r["count"] for r in decode)
        out["decode"] = {
            "matmul_seconds": matmul,
            "modelled_matmul_seconds": modelled_part,
            "non_matmul_seconds": other,
            "non_matmul_measured": nonmatmul is not None,
            # measured, but not on this series' engine (ggml: the torch-timed block stands in for ggml's graph)
            "non_matmul_stand_in": (nonmatmul or {}).get("stand_in"),
            "non_matmul_engine": (nonmatmul or {}).get("engine"),  # "ggml": timed as a ggml graph
            "seconds_per_token": total,
            "tokens_per_second": 1.0 / total,
            "share_by_kind": {k: v / matmul for k, v in share.items()},
            "share_by_bound": {k: v / matmul for k, v in bounds.items()},
            # every matmul weight at its real size (scales, zero points, the float head) plus one embedding row
            "weight_bytes_per_token": weight_bytes + layers.embedding_bytes_per_token(dtype),
            # matmul weights over matmul time (the embedding row and the modelled non-matmul part left out)
            "weight_gbps_attained": weight_bytes / matmul / 1e9,
            "dram_fraction": weight_bytes / matmul / bw,
            "kernel_limited_gbps": limited_bytes / limited_time / 1e9 if limited_time else None,
            "fully_measured": modelled_part == 0,
        }
        if dtype in FLOAT_DTYPES and not whatif and all(r["stored"] in FLOAT_DTYPES for r in decode):
            out["what_if"] = _what_if(decode, layers, dtype, bw, P, t0, other, results)
    if whatif:
        return out
    for m in results.get("settings", {}).get("tokens", [1]):
        if m == 1:
            continue
        chunk = [r for r in rows if r["m"] == m]
        if chunk:
            # the layers a chunk runs for its last token only (the head: logits of that token alone), at M = 1:
            # their decode rows, else (--tokens without 1) the model's time
            once = {x.name for x in layers.layers if x.chunk_rows(m) != m}
            last = [r for r in decode if r["layer"] in once]
            unmeasured = [x for x in layers.layers if x.name in once - {r["layer"] for r in last}]
            t_last = sum(row_seconds(r) * r["count"] for r in last) + sum(
                model_seconds(*_work(1, *x.call_shape, dtype), P, bw, t0) * x.calls for x in unmeasured)
            t = sum(row_seconds(r) * r["count"] for r in chunk) + t_last
            pre = {"chunk": m, "matmul_seconds": t, "tokens_per_second": m / t, "last_token_seconds": t_last,
                   "modelled": bool(unmeasured) or any(not r["measured"] for r in chunk + last)}
            if nonmatmul and nonmatmul.get("seq"):  # the sequential part, timed for this chunk length
                seq = nonmatmul["seq"].get(str(m))
                if seq:
                    pre.update({"state_seconds": seq["seconds_per_chunk"], "seconds": t + seq["seconds_per_chunk"],
                                "tokens_per_second": m / (t + seq["seconds_per_chunk"]), "with_state": True,
                                "state_method": seq.get("method", "block")})
            pre.setdefault("with_state", False)
            pre.setdefault("seconds", t)
            out.setdefault("prefill", []).append(pre)
    return out


def _what_if_bytes_per_weight(q: str, k: int, n: int, block_size: int) -> float:
    """Real bytes per weight of a what-if format: int8/int4 as onnxruntime's blockwise MatMulNBits stores them
    (packed integers, a scale and a zero point per block), fp16 at 2 bytes."""
    if q in ("int8", "int4"):
        fmt = FORMATS[DEFAULT_FORMATS[q]]
        return fmt.weight_bytes(k, n, block_size) / (k * n)
    return DTYPE_BYTES[q]


def _what_if(decode: list[dict], layers: LayerList, dtype: str, bw: float, P: float, t0: float,
             other: float, results: dict | None = None) -> dict:
    """Decode time if weights were stored at fp16/int8/int4 (modelled upper bound on the speed-up).

    The layers of the kinds a quantized model stores quantized (``settings.quantize``, default
    DEFAULT_QUANTIZE) are re-modelled with their weight bytes at the new format's real size (block scales and
    zero points included); the head, low-rank matrices and embedding keep their float bytes, as the measured
    quantized series do. A bandwidth-bound layer shrinks with its bytes, a compute- or overhead-bound one does
    not. Dequantization is assumed free, so this is the best case; the measured quantized kernels (when
    present) say what a kernel achieves.
    """
    settings = (results or {}).get("settings", {})
    quantize = set(settings.get("quantize") or DEFAULT_QUANTIZE)
    block = int(settings.get("block_size") or 32)
    base = sum(row_seconds(r) * r["count"] for r in decode) + other
    base_bytes = sum(r["weight_bytes"] * r["count"] for r in decode)
    out = {}
    for q in ("fp16", "int8", "int4"):
        if DTYPE_BYTES[q] >= weight_bytes_of(dtype):
            continue
        t = other
        q_weight_bytes = 0.0
        for r in decode:
            per = _what_if_bytes_per_weight(q, r["k"], r["n"], block) if r["kind"] in quantize or q == "fp16" \
                else r["weight_bytes"] / (r["k"] * r["n"])
            activations = r["bytes"] - r["weight_bytes"]
            q_bytes = r["k"] * r["n"] * per + activations
            q_weight_bytes += r["k"] * r["n"] * per * r["count"]
            # keep the layer's measured efficiency: scale the modelled time by measured / model, both at the
            # bandwidth the layer was judged at (the sustained figure on a machine whose bandwidth comes in bursts)
            efficiency = row_seconds(r) / r["model_seconds"] if r["model_seconds"] else 1.0
            t += model_seconds(r["flops"], q_bytes, P, row_bandwidth(r, bw, t0), t0) * efficiency * r["count"]
        out[q] = {"seconds_per_token": t, "tokens_per_second": 1 / t, "speedup": base / t,
                  "bytes_ratio": base_bytes / q_weight_bytes}
    return out


def quant_comparison(verdict: dict, results: dict) -> list[dict]:
    """Measured quantized decode beside its bytes-only what-if, per backend and format, layer by layer.

    The quantized series is the model as it runs (build_verdict): layers of the kinds in ``settings.quantize``
    (default DEFAULT_QUANTIZE) at the format's measured time, the others at the same backend's fastest float
    series (fp16 or fp32; fp32 where tied: float_base), the one its kept-float rows came from. The bytes-only figure re-models each quantized layer of that float series with the
    format's real bytes per weight (scales and zero points included, from the measured points), keeping the
    float layer's measured efficiency: what the format would give if dequantization were free (an upper
    bound on the speed-up, not a ceiling the format is judged against). Whether the quantized layers are
    kernel-limited is read from the roofline (their real bytes over the DRAM ceiling, their FLOPs over the
    format's own measured peak), like any layer.
    """
    series = {(s["backend"], s["dtype"]): s for s in verdict["series"]}
    out = []
    for (backend, dtype), q in series.items():
        if dtype in FLOAT_DTYPES or not q["model"].get("decode"):
            continue
        desc = (results.get("backends") or {}).get(backend) or {}
        # a backend with a float type of its own for the unquantized matrices (ggml: f16) is compared with it
        float_types = (desc["float_dtype"],) if desc.get("float_dtype") else ("fp16", "fp32", "bf16")
        floats = [series[(backend, d)] for d in float_types
                  if (backend, d) in series and series[(backend, d)]["model"].get("decode")]
        # the float series its unquantized matrices were kept at (_keep_float), else the same choice over the decodes
        base = (next((s for s in floats if s["dtype"] == q.get("float_dtype")), None)
                or float_base([(s["model"]["decode"]["seconds_per_token"], s) for s in floats], results))
        if base is None:  # no float series of this backend
            continue
        bw = base["bandwidth_gbps"] * 1e9
        P, t0 = base["peak_gflops"] * 1e9, base["overhead_seconds"]
        q_rows = {r["layer"]: r for r in q["rows"] if r["m"] == 1}
        other = base["model"]["decode"]["non_matmul_seconds"]
        rows, fully = [], True
        for r in (r for r in base["rows"] if r["m"] == 1):
            t_base = row_seconds(r)
            qr = q_rows.get(r["layer"])
            if qr is not None and not qr.get("kept_float"):
                t_q = row_seconds(qr)
                fully = fully and qr["measured"]
                per = qr["weight_bytes"] / (r["k"] * r["n"])
                activations = r["bytes"] - r["weight_bytes"]
                efficiency = t_base / r["model_seconds"] if r["model_seconds"] else 1.0
                t_bound = model_seconds(r["flops"], r["k"] * r["n"] * per + activations, P, row_bandwidth(r, bw, t0),
                                        t0) * efficiency
                quantized, limited = True, kernel_share(qr)
            else:
                t_q = t_bound = t_base
                per, quantized, limited = r["weight_bytes"] / (r["k"] * r["n"]), False, 0.0
            rows.append({"layer": r["layer"], "kind": r["kind"], "k": r["k"], "n": r["n"], "count": r["count"],
                         **({"batch": r["batch"]} if "batch" in r else {}), "quantized": quantized, "bytes_per_weight": per, "baseline_seconds": t_base,
                         "measured_seconds": t_q, "bound_seconds": t_bound,
                         "kernel_limited": bool(quantized and qr is not None and qr.get("kernel_limited")),
                         "kernel_share": limited})
        total = lambda key, rows=rows, other=other: other + sum(x[key] * x["count"] for x in rows)  # noqa: E731
        base_t, meas_t, bound_t = total("baseline_seconds"), total("measured_seconds"), total("bound_seconds")
        base_weight_bytes = sum(r["weight_bytes"] * r["count"] for r in base["rows"] if r["m"] == 1)
        weight_bytes = sum(x["k"] * x["n"] * x["bytes_per_weight"] * x["count"] for x in rows)
        q_layers = [x for x in rows if x["quantized"]]
        q_time = sum(x["measured_seconds"] * x["count"] for x in q_layers)
        limited_time = sum(x["measured_seconds"] * x["count"] * x["kernel_share"] for x in q_layers)
        effective = (sum(x["k"] * x["n"] * x["bytes_per_weight"] * x["count"] for x in q_layers) / q_time / 1e9
                     if q_time else None)
        # the bandwidth its layers were judged at: the sustained figure where the machine's came in bursts
        dram = q.get("sustained_gbps") or q["bandwidth_gbps"]
        out.append({
            "backend": backend, "dtype": dtype, "baseline": base["dtype"], "whatif": q.get("whatif", False),
            "format": next((p.get("format") for p in results.get("measurements", [])
                            if p["backend"] == backend and p["dtype"] == dtype and p.get("format")), dtype),
            "quantized_kinds": sorted({x["kind"] for x in q_layers}),
            "float_kinds": sorted({x["kind"] for x in rows if not x["quantized"]}),
            "bytes_ratio": base_weight_bytes / weight_bytes if weight_bytes else None,
            "weight_bytes_per_token": q["model"]["decode"]["weight_bytes_per_token"],
            "baseline_seconds": base_t, "measured_seconds": meas_t, "bound_seconds": bound_t,
            "measured_speedup": base_t / meas_t, "bound_speedup": base_t / bound_t,
            # the bound keeps the float layers' distance from their roofline: a format whose kernel runs closer to its
            # own beats it (ggml q4_0 1.72x against a 1.17x bound from ggml fp16's f16-converting GEMV on x86)
            "beats_bound": base_t / meas_t > BOUND_BEATEN * base_t / bound_t,
            "effective_gbps": effective, "dram_gbps": dram,
            "dram_fraction": effective / dram if effective and dram else None,
            "dram_sustained": q["bandwidth_gbps"] > BURSTY * dram,
            "fully_measured": fully, "limited_by_kernel": q_time > 0 and limited_time >= 0.5 * q_time,
            "layers": rows,
        })
    return out


#: a measured quantized speed-up this many times its bytes-only bound or more is said to beat it (quant_comparison)
BOUND_BEATEN = 1.05


def measured_what_if(verdict: dict, results: dict) -> dict:
    """The verdict's smaller-weights figures: measured quantized decode first, the bytes-only model beside it.

    ``measured``: every fully measured quantized series (any backend with quantized series, named by backend
    and format), its decode time and its speed-up over the fastest float decode of the run (and over its own
    backend's float series); ``modelled``: the bytes-only what-if of that fastest float series (an upper
    bound: dequantization free); ``why_not``: why nothing was measured, where nothing was.
    """
    floats = [s for s in verdict["series"] if s["dtype"] in FLOAT_DTYPES and s["model"].get("decode")]
    ref = min(floats, key=lambda s: (not s["model"]["decode"]["fully_measured"],
                                     s["model"]["decode"]["seconds_per_token"])) if floats else None
    measured = []
    comps = verdict["quant"] if "quant" in verdict else quant_comparison(verdict, results)
    for q in comps:
        if not q["fully_measured"]:
            continue
        x = dict(q)
        if ref:
            x["reference"] = f"{ref['backend']} {ref['dtype']}"
            x["speedup_vs_reference"] = ref["model"]["decode"]["seconds_per_token"] / q["measured_seconds"]
        measured.append(x)
    modelled = (ref or {}).get("model", {}).get("what_if", {})
    for x in measured:  # a measured speed-up above the reference's bytes-only figure of its width: it beats it
        fmt = FORMATS.get(DEFAULT_FORMATS.get(x["dtype"], ""))
        bound = modelled.get(f"int{fmt.bits}") if fmt else None
        x["beats_modelled"] = bool(bound and x.get("speedup_vs_reference")
                                   and x["speedup_vs_reference"] > BOUND_BEATEN * bound["speedup"])
    measured.sort(key=lambda x: x["measured_seconds"])
    why = None
    if not measured:
        settings = results.get("settings", {})
        skipped = [x for x in results.get("skipped", []) if x.get("dtype") and x["dtype"] not in FLOAT_DTYPES]
        if settings.get("whatif_missing"):
            why = settings["whatif_missing"]
        elif skipped:
            why = "; ".join(f"{x['backend']} {x['dtype']}: {x['reason']}" for x in skipped[:3])
        elif any(s["dtype"] not in FLOAT_DTYPES for s in verdict["series"]):
            why = "the quantized series were only partly measured (layers skipped or failed)"
        elif "whatif_series" in settings and not settings["whatif_series"]:
            why = "no quantized series was planned"
        else:
            why = "this results file predates measured what-ifs (rerun analyze)"
    return {"measured": measured, "reference": ref, "modelled": modelled, "why_not": why}


def verdict_of(results: dict) -> tuple[LayerList, dict]:
    """The layer list and verdict of a results file; a damaged file is refused with one line."""
    try:
        layers = layers_from_json(results["profile"])
        return layers, build_verdict(results, layers)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise InputError(f"results file is damaged or incomplete ({type(e).__name__}: {e})") from None
