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

from collections import defaultdict

from rwkvprobe.backends.quant import QUANT_DTYPES as QUANTIZED_ROW_DTYPES  # may keep some matrices float
from rwkvprobe.measure import point_seconds
from rwkvprobe.profile import DTYPE_BYTES, LayerList, activation_bytes_of, weight_bytes_of

CLASSES = ("compute-bound", "bandwidth-bound", "overhead-bound")
RULE = ("overhead-bound when the backend's fixed per-call cost t0 >= max(FLOPs/P, bytes/W); otherwise "
        "compute-bound when FLOPs/P > bytes/W (arithmetic intensity above the ridge point P/W), else "
        "bandwidth-bound. P: the backend's measured peak GFLOP/s at that dtype; W: measured DRAM bandwidth "
        "(read kernel, same threads); t0: measured time of a tiny cache-resident matmul. Fraction of roofline: "
        "(t0 + max(FLOPs/P, bytes/W)) / measured time; below 50% the layer is marked kernel-limited.")
#: below this fraction of its roofline a layer is flagged "kernel-limited"
KERNEL_LIMITED = 0.5
#: a measured layer may reach this multiple of a measured ceiling (noise) before the ceiling is raised
CEILING_TOLERANCE = 1.05


def classify(flops: float, nbytes: float, peak_flops: float, bandwidth: float, overhead: float) -> str:
    """The bound of one call by the rule above (all figures in SI base units: FLOP/s, bytes/s, s)."""
    t_compute = flops / peak_flops
    t_memory = nbytes / bandwidth
    if overhead >= max(t_compute, t_memory):
        return "overhead-bound"
    return "compute-bound" if t_compute > t_memory else "bandwidth-bound"


def model_seconds(flops: float, nbytes: float, peak_flops: float, bandwidth: float, overhead: float) -> float:
    return overhead + max(flops / peak_flops, nbytes / bandwidth)


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
    by_key = {(p["backend"], p["dtype"], p["m"], p["k"], p["n"]): p for p in results.get("measurements", [])}
    for c in results.get("ceilings", []):
        if not c.get("peak_gflops") or c.get("overhead_seconds") is None or bw is None:
            continue
        P, t0 = c["peak_gflops"] * 1e9, c["overhead_seconds"]
        key = (c["backend"], c["dtype"])
        # a series measured on another machine (a board driven over adb) carries that machine's bandwidth
        bw_s = c["bandwidth_gbps"] * 1e9 if c.get("bandwidth_gbps") else bw
        rows = _rows(results, layers, c, by_key, P, bw_s, t0)
        adjustments = [] if c.get("modelled") else hold_ceilings(rows, P, bw_s, t0)
        if adjustments:
            P, bw_s, t0 = adjustments[-1]["P"], adjustments[-1]["W"], adjustments[-1]["t0"]
            rows = _rows(results, layers, c, by_key, P, bw_s, t0)
            warnings += [f"{c['backend']} {c['dtype']}: {a['text']}" for a in adjustments]
        series[key] = {"backend": c["backend"], "dtype": c["dtype"], "peak_gflops": P / 1e9,
                       "bandwidth_gbps": bw_s / 1e9, "overhead_seconds": t0, "gemv_gbps": c.get("gemv_gbps"),
                       "measured_ceilings": {"peak_gflops": c["peak_gflops"], "overhead_seconds": c["overhead_seconds"],
                                             "bandwidth_gbps": (c.get("bandwidth_gbps") or bw / 1e9)},
                       "ceiling_adjustments": [{k: v for k, v in a.items() if k not in ("P", "W", "t0")}
                                               for a in adjustments],
                       "rows": rows, "model": _model_level(rows, layers, c["dtype"], bw_s, P, t0, results,
                                                           _nonmatmul(results, c["backend"], c["dtype"]))}
    return {"bandwidth_gbps": bw / 1e9 if bw else None, "rule": RULE, "series": list(series.values()),
            "ceiling_warnings": warnings}


def _rows(results: dict, layers: LayerList, c: dict, by_key: dict, P: float, bw_s: float, t0: float) -> list[dict]:
    """One row per layer and token count of a series: measured verdict, else the model's time (labelled).

    A backend that keeps some kinds at a float type in its quantized series (ggml, rwkv.cpp's rule) takes
    those rows from its float series (``stored_as``), judged on that series' own peak and overhead."""
    rows = []
    desc = (results.get("backends") or {}).get(c["backend"]) or {}
    keep_float = desc.get("float_dtype") if c["dtype"] in QUANTIZED_ROW_DTYPES and desc.get("float_dtype") else None
    q_kinds = quantize_kinds(results.get("settings", {}).get("quantize"), desc)
    float_c = next((f for f in results.get("ceilings", []) if (f["backend"], f["dtype"]) == (c["backend"], keep_float)
                    and f.get("peak_gflops") and f.get("overhead_seconds") is not None), None)
    for m in results.get("settings", {}).get("tokens", [1]):
        for layer in layers.layers:
            stored, P_r, t0_r = c["dtype"], P, t0
            if keep_float and layer.kind not in q_kinds:  # this matrix stays at the float type
                stored = keep_float
                if float_c:
                    P_r, t0_r = float_c["peak_gflops"] * 1e9, float_c["overhead_seconds"]
            p = by_key.get((c["backend"], stored, m, layer.k, layer.n))
            row = {"layer": layer.name, "kind": layer.kind, "k": layer.k, "n": layer.n, "m": m,
                   "count": layer.count, "measured": False, "status": "not measured"}
            if stored != c["dtype"]:
                row["stored_as"] = stored
            if p is not None:
                row["status"] = _status(p)
                if (p.get("contention") or {}).get("contended"):
                    row["contended"] = True
            t = point_seconds(p) if p else None
            flops, nbytes = (p["flops"], p["bytes"]) if p else _work(m, layer.k, layer.n, stored)
            if t is not None:
                row.update(layer_verdict(flops, nbytes, t, P_r, bw_s, t0_r), measured=True)
            else:  # not measured (skipped, failed or wrong): the model's time, labelled modelled
                row.update({"seconds": None, "flops": flops, "bytes": nbytes,
                            "model_seconds": model_seconds(flops, nbytes, P_r, bw_s, t0_r),
                            "bound": classify(flops, nbytes, P_r, bw_s, t0_r)})
            rows.append(row)
    return rows


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
    # rows kept at another type (ggml's f16 rows in a quantized series) answer to that series' ceilings
    measured = [r for r in rows if r.get("measured") and r.get("seconds") and not r.get("stored_as")]
    if not measured:
        return []
    out = []

    def name(r):
        return f"layer {r['layer']} (M={r['m']}, {r['k']}x{r['n']})"

    top = max(measured, key=lambda r: r["bytes"] / r["seconds"])
    attained = top["bytes"] / top["seconds"]
    if attained > tolerance * W:
        out.append({"ceiling": "bandwidth", "layer": top["layer"], "m": top["m"], "unit": "GB/s",
                    "measured": W / 1e9, "attained": attained / 1e9,
                    "text": f"{name(top)} read {attained / 1e9:.1f} GB/s, {attained / W - 1:.0%} above the measured "
                            f"DRAM bandwidth of {W / 1e9:.1f} GB/s (best of every probe of the run): its bandwidth "
                            f"ceiling is raised to {attained / 1e9:.1f} GB/s"})
        W = attained
    top = max(measured, key=lambda r: r["flops"] / r["seconds"])
    attained = top["flops"] / top["seconds"]
    if attained > tolerance * P:
        out.append({"ceiling": "compute", "layer": top["layer"], "m": top["m"], "unit": "GFLOP/s",
                    "measured": P / 1e9, "attained": attained / 1e9,
                    "text": f"{name(top)} ran at {attained / 1e9:.1f} GFLOP/s, {attained / P - 1:.0%} above the "
                            f"measured peak of {P / 1e9:.1f} GFLOP/s: its compute ceiling is raised to "
                            f"{attained / 1e9:.1f} GFLOP/s"})
        P = attained
    # the largest t0 that keeps every measured layer within the tolerance of its roofline
    slack = [(tolerance * r["seconds"] - max(r["flops"] / P, r["bytes"] / W), r) for r in measured]
    worst = max(measured, key=lambda r: model_seconds(r["flops"], r["bytes"], P, W, t0) / r["seconds"])
    if model_seconds(worst["flops"], worst["bytes"], P, W, t0) > tolerance * worst["seconds"]:
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


def _status(p: dict) -> str:
    if p.get("error"):
        return "failed: " + p["error"]
    if p.get("skipped"):
        return "skipped: " + p["skipped"]
    if p.get("check") and not p["check"]["ok"]:
        return "WRONG RESULT: " + p["check"].get("detail", "")
    if p.get("timing") and not p.get("check"):
        return "not checked"
    return "measured" if p.get("timing") else "not measured"


def _work(m: int, k: int, n: int, dtype: str) -> tuple[float, float]:
    a = activation_bytes_of(dtype)
    return 2.0 * m * k * n, k * n * weight_bytes_of(dtype) + m * k * a + m * n * a


def _bandwidth_bps(results: dict) -> float | None:
    """W: the best read GB/s over every bandwidth probe of the run (before, between and after the layers)."""
    from rwkvprobe.bandwidth import best_read_gbps

    best = best_read_gbps(results)
    return best * 1e9 if best else None


def _nonmatmul(results: dict, backend: str, dtype: str) -> dict | None:
    """The measured non-matmul block of a series (analyze times it for torch; see nonmatmul.py).

    Quantized-weight series run their non-matmul work at the float activation type: they use the fp32 block."""
    from rwkvprobe.nonmatmul import block_dtype

    for x in results.get("nonmatmul") or []:
        if x.get("backend") == backend and x.get("dtype") == block_dtype(dtype, backend) and x.get("seconds_per_token"):
            return x
    return None


def _model_level(rows: list[dict], layers: LayerList, dtype: str, bw: float, P: float, t0: float,
                 results: dict, nonmatmul: dict | None = None) -> dict:
    """Decode ms/token, prefill tokens/s, share by kind and the int8/int4 what-if, for one series.

    The work outside the weight matmuls is the measured non-matmul block times n_layer where analyze
    timed it, else modelled as its bytes over the DRAM bandwidth (a lower bound)."""
    out: dict = {}
    decode = [r for r in rows if r["m"] == 1]
    if decode:
        matmul = sum((r["seconds"] if r["measured"] else r["model_seconds"]) * r["count"] for r in decode)
        modelled_part = sum(r["model_seconds"] * r["count"] for r in decode if not r["measured"])
        other = nonmatmul["seconds_per_token"] if nonmatmul else non_matmul_bytes(layers, dtype) / bw
        total = matmul + other
        share: dict[str, float] = defaultdict(float)
        bounds: dict[str, float] = defaultdict(float)
        for r in decode:
            t = (r["seconds"] if r["measured"] else r["model_seconds"]) * r["count"]
            share[r["kind"]] += t
            bounds[r["bound"]] += t
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
            # each matrix at the type it is stored in (a quantized series may keep some at a float type)
            "weight_bytes_per_token": (sum(r["k"] * r["n"] * weight_bytes_of(r.get("stored_as", dtype)) * r["count"]
                                           for r in decode)
                                       + layers.embedding_bytes_per_token(_embedding_dtype(decode, dtype))),
            # matmul weights over matmul time (the embedding row and the modelled non-matmul part left out)
            "weight_gbps_attained": sum(r["k"] * r["n"] * weight_bytes_of(r.get("stored_as", dtype)) * r["count"]
                                        for r in decode) / matmul / 1e9,
            "fully_measured": modelled_part == 0,
        }
        out["what_if"] = _what_if(decode, layers, dtype, bw, P, t0, other)
    for m in results.get("settings", {}).get("tokens", [1]):
        if m == 1:
            continue
        chunk = [r for r in rows if r["m"] == m]
        if chunk:
            t = sum((r["seconds"] if r["measured"] else r["model_seconds"]) * r["count"] for r in chunk)
            out.setdefault("prefill", []).append({
                "chunk": m, "matmul_seconds": t, "tokens_per_second": m / t,
                "modelled": any(not r["measured"] for r in chunk)})
    return out


def _embedding_dtype(rows: list[dict], dtype: str) -> str:
    """The embedding's type: the float type a quantized series keeps some matrices at, else the series' own."""
    return next((r["stored_as"] for r in rows if r.get("stored_as")), dtype)


def _what_if(decode: list[dict], layers: LayerList, dtype: str, bw: float, P: float, t0: float,
             other: float) -> dict:
    """Decode time if weights were stored at int8/int4 (modelled upper bound on the speed-up).

    Each layer's time is re-modelled with its weight bytes at the new width: a bandwidth-bound layer
    shrinks with its bytes, a compute- or overhead-bound one does not. Dequantization is assumed free,
    so this is the best case; the measured quantized kernels (when present) say what a kernel achieves.
    """
    base = sum((r["seconds"] if r["measured"] else r["model_seconds"]) * r["count"] for r in decode) + other
    out = {}
    for q in ("fp16", "int8", "int4"):
        if DTYPE_BYTES[q] >= weight_bytes_of(dtype):
            continue
        t = other
        for r in decode:
            measured = r["seconds"] if r["measured"] else r["model_seconds"]
            activations = r["bytes"] - r["k"] * r["n"] * weight_bytes_of(r.get("stored_as", dtype))
            q_bytes = r["k"] * r["n"] * DTYPE_BYTES[q] + activations
            # keep the layer's measured efficiency: scale the modelled time by measured / model
            efficiency = measured / r["model_seconds"] if r["model_seconds"] else 1.0
            t += model_seconds(r["flops"], q_bytes, P, bw, t0) * efficiency * r["count"]
        out[q] = {"seconds_per_token": t, "tokens_per_second": 1 / t, "speedup": base / t,
                  "bytes_ratio": layers.weight_bytes_per_token(dtype) / layers.weight_bytes_per_token(q)}
    return out


#: Which layer kinds a quantized model stores quantized by default: the big block matrices. The head,
#: the low-rank (LoRA) matrices and the embedding stay at the float type, as common runtimes keep them.
DEFAULT_QUANTIZE = ("att", "ffn", "custom")


def quantize_kinds(setting: list[str] | None, backend_desc: dict | None = None) -> set[str]:
    """The layer kinds a quantized series stores quantized: ``--quantize`` when given, else the backend's own
    rule (its description's ``quantize_kinds``: ggml follows rwkv.cpp), else DEFAULT_QUANTIZE."""
    return set(setting or (backend_desc or {}).get("quantize_kinds") or DEFAULT_QUANTIZE)


def quant_comparison(verdict: dict, results: dict) -> list[dict]:
    """Measured quantized decode beside its bytes-only bound, per backend and format, layer by layer.

    The model mixes: layers of the kinds in ``settings.quantize`` (default DEFAULT_QUANTIZE) take the
    quantized format's measured time, the others the same backend's faster float series (fp16 or fp32).
    The bound re-models each quantized layer of that float series with the format's real bytes per
    weight (scales and zero points included, from the measured points), keeping the layer's measured
    efficiency: what the format would give if dequantization were free.
    """
    series = {(s["backend"], s["dtype"]): s for s in verdict["series"]}
    bpw = {(p["backend"], p["dtype"], p["k"], p["n"]): p.get("bytes_per_weight")
           for p in results.get("measurements", []) if p.get("m") == 1}
    out = []
    for (backend, dtype), q in series.items():
        if dtype in ("fp32", "fp16", "bf16") or not q["model"].get("decode"):
            continue
        desc = (results.get("backends") or {}).get(backend) or {}
        quantize = quantize_kinds(results.get("settings", {}).get("quantize"), desc)
        # a backend with a float type of its own for the unquantized matrices (ggml: f16) is compared with it
        float_types = (desc["float_dtype"],) if desc.get("float_dtype") else ("fp16", "fp32", "bf16")
        floats = [series[(backend, d)] for d in float_types
                  if (backend, d) in series and series[(backend, d)]["model"].get("decode")]
        if not floats:
            continue
        base = min(floats, key=lambda s: s["model"]["decode"]["seconds_per_token"])
        bw = base["bandwidth_gbps"] * 1e9
        P, t0 = base["peak_gflops"] * 1e9, base["overhead_seconds"]
        base_bytes = weight_bytes_of(base["dtype"])
        q_rows = {r["layer"]: r for r in q["rows"] if r["m"] == 1}
        other = base["model"]["decode"]["non_matmul_seconds"]
        rows, fully = [], True
        for r in (r for r in base["rows"] if r["m"] == 1):
            t_base = r["seconds"] if r["measured"] else r["model_seconds"]
            if r["kind"] in quantize and r["layer"] in q_rows:
                qr = q_rows[r["layer"]]
                t_q = qr["seconds"] if qr["measured"] else qr["model_seconds"]
                fully = fully and qr["measured"]
                per = bpw.get((backend, dtype, r["k"], r["n"])) or weight_bytes_of(dtype)
                activations = r["bytes"] - r["k"] * r["n"] * base_bytes
                efficiency = t_base / r["model_seconds"] if r["model_seconds"] else 1.0
                t_bound = model_seconds(r["flops"], r["k"] * r["n"] * per + activations, P, bw, t0) * efficiency
                quantized = True
            else:
                t_q = t_bound = t_base
                per, quantized = base_bytes, False
            rows.append({"layer": r["layer"], "kind": r["kind"], "k": r["k"], "n": r["n"], "count": r["count"],
                         "quantized": quantized, "bytes_per_weight": per, "baseline_seconds": t_base,
                         "measured_seconds": t_q, "bound_seconds": t_bound})
        total = lambda key: other + sum(x[key] * x["count"] for x in rows)  # noqa: E731
        base_t, meas_t, bound_t = total("baseline_seconds"), total("measured_seconds"), total("bound_seconds")
        base_weight_bytes = sum(x["k"] * x["n"] * base_bytes * x["count"] for x in rows)
        weight_bytes = sum(x["k"] * x["n"] * x["bytes_per_weight"] * x["count"] for x in rows)
        q_layers = [x for x in rows if x["quantized"]]
        q_time = sum(x["measured_seconds"] * x["count"] for x in q_layers)
        out.append({
            "backend": backend, "dtype": dtype, "baseline": base["dtype"],
            "format": next((p.get("format") for p in results.get("measurements", [])
                            if p["backend"] == backend and p["dtype"] == dtype and p.get("format")), dtype),
            "quantized_kinds": sorted(quantize & {x["kind"] for x in rows}),
            "float_kinds": sorted({x["kind"] for x in rows if not x["quantized"]}),
            "bytes_ratio": base_weight_bytes / weight_bytes if weight_bytes else None,
            "baseline_seconds": base_t, "measured_seconds": meas_t, "bound_seconds": bound_t,
            "measured_speedup": base_t / meas_t, "bound_speedup": base_t / bound_t,
            "effective_gbps": (sum(x["k"] * x["n"] * x["bytes_per_weight"] * x["count"] for x in q_layers) / q_time / 1e9
                               if q_time else None),
            "fully_measured": fully, "limited_by_kernel": meas_t > 1.3 * bound_t, "layers": rows,
        })
    return out
