"""The measured quantization verdict: a format's measured decode beside its bytes-only bound."""

import pytest
from roofline_fixtures import explicit_profile, layers_of

from rwkvprobe.model.quant import QUICK_WHATIF_LEFT_OUT
from rwkvprobe.report.markdown import _quant_section, verdict_sentences
from rwkvprobe.results import new_results
from rwkvprobe.verdict.roofline import build_verdict, main_bound, quant_comparison

BW = 10e9  # bytes/s
K = N = 4096
LAYERS = layers_of(explicit_profile(("w", K, N, 10)))


def _point(dtype, seconds, bytes_per_weight, act=4):
    nbytes = K * N * bytes_per_weight + K * act + N * act
    return {"backend": "onnxruntime", "dtype": dtype, "m": 1, "k": K, "n": N, "flops": 2.0 * K * N, "bytes": nbytes,
            "bytes_per_weight": bytes_per_weight, "format": f"{dtype} (test format)",
            "check": {"ok": True, "rel_err": 0.0, "tolerance": 1e-4}, "timing": {"median_seconds": seconds}, "error": None}


def _results(int4_seconds):
    r = new_results("analyze", settings={"tokens": [1]})
    from rwkvprobe.model.profile import profile_json

    r["profile"] = profile_json(LAYERS)
    r["bandwidth"] = {"runs": [{"kernels": {"read": {"best_gbps": BW / 1e9}}}]}
    ceil = {"backend": "onnxruntime", "peak_gflops": 1000.0, "overhead_seconds": 1e-6, "gemv_gbps": 9.0}
    r["ceilings"] = [dict(ceil, dtype="fp32"), dict(ceil, dtype="int4", peak_gflops=100.0)]
    fp32_t = (K * N * 4 + 8 * K) / BW  # exactly at the bandwidth roof
    r["measurements"] = [_point("fp32", fp32_t, 4.0), _point("int4", int4_seconds, 0.640625)]
    return r, fp32_t


def test_format_at_its_bytes_bound_is_on_its_roofline_and_the_sentence_leads_with_the_measurement():
    bound_t = (K * N * 0.640625 + 8 * K) / BW
    r, fp32_t = _results(bound_t)
    [q] = quant_comparison(build_verdict(r, LAYERS), r)
    assert q["baseline"] == "fp32" and q["dtype"] == "int4"
    assert q["bytes_ratio"] == pytest.approx(4 / 0.640625)
    assert q["bound_speedup"] == pytest.approx(fp32_t / bound_t, rel=1e-3)
    assert q["measured_speedup"] == pytest.approx(q["bound_speedup"], rel=1e-3)
    assert not q["limited_by_kernel"]
    assert q["dram_fraction"] == pytest.approx(K * N * 0.640625 / bound_t / BW, rel=1e-6)
    line = next(s for s in verdict_sentences(build_verdict(r, LAYERS), LAYERS, r) if s.startswith("Smaller weights"))
    # measured first, naming backend and format; the bytes-only model beside it as an upper bound
    assert line.startswith("Smaller weights, measured") and "onnxruntime int4 (test format)" in line
    assert f"{fp32_t / bound_t:.2f}x against onnxruntime fp32" in line
    assert line.index("measured") < line.index("Bytes-only upper bound")
    assert "kernel-limited" not in line and "reaches" not in line
    assert "--quick" not in line
    # a --quick run that measured these series left the onnxruntime what-if out (analyze.plan_whatif): said so
    r["settings"]["whatif_missing"] = f"{QUICK_WHATIF_LEFT_OUT}ggml q8_0 and ggml q4_0 for the smaller weights"
    line = next(s for s in verdict_sentences(build_verdict(r, LAYERS), LAYERS, r) if s.startswith("Smaller weights"))
    assert line.endswith("onnxruntime's int8/int4 formats are not measured in --quick runs that measure these "
                         "(run without --quick).")


def test_slow_dequantization_is_kernel_limited_on_the_roofline():
    r, fp32_t = _results(fp32_t_slow := 0.8 * ((K * N * 4 + 8 * K) / BW))
    v = build_verdict(r, LAYERS)
    [q] = quant_comparison(v, r)
    assert q["measured_speedup"] == pytest.approx(1 / 0.8, rel=1e-3)
    assert q["bound_speedup"] > 5 and q["limited_by_kernel"]
    assert q["effective_gbps"] == pytest.approx(K * N * 0.640625 * 10 / (fp32_t_slow * 10) / 1e9, rel=1e-6)
    # the int4 series itself counts its time as kernel-limited (12.8% of DRAM bandwidth < 50% of its bound)
    (s,) = [x for x in v["series"] if x["dtype"] == "int4"]
    assert s["model"]["decode"]["share_by_bound"] == {"kernel-limited": 1.0}
    line = next(x for x in verdict_sentences(v, LAYERS, r) if x.startswith("Smaller weights"))
    assert "kernel-limited" in line and "1.25x against onnxruntime fp32" in line
    assert f"{_pct(q['dram_fraction'])} of DRAM bandwidth" in line


def _pct(x):
    return f"{100 * x:.0f}%"


def test_a_format_whose_kernel_runs_closer_to_its_roofline_beats_the_bytes_only_figure_and_is_said_to():
    """fp32 at half its roofline's speed (a slow float kernel) and int4 on its own roofline: the bytes-only figure
    keeps fp32's distance from its roofline, so int4 measures 2x it; the table marks it 'beaten' and the sentence
    says int4 beats it instead of calling it an upper bound. At its bound the same format is not said to."""
    int4_roof = (K * N * 0.640625 + 8 * K) / BW
    r, fp32_t = _results(int4_roof)
    r["measurements"][0]["timing"]["median_seconds"] = 2 * fp32_t
    r["ceilings"][0]["peak_gflops"] = 1000.0
    v = build_verdict(r, LAYERS)
    [q] = quant_comparison(v, r)
    assert q["measured_speedup"] == pytest.approx(2 * q["bound_speedup"], rel=0.02) and q["beats_bound"]
    line = next(x for x in verdict_sentences(v, LAYERS, r) if x.startswith("Smaller weights"))
    assert "Bytes-only upper bound" not in line
    assert "onnxruntime int4 beats it (its kernel runs closer to its roofline than onnxruntime fp32's)" in line
    assert any("(beaten)" in row for row in _quant_section(v, r))
    r, _ = _results(int4_roof)  # fp32 on its roofline: int4 at its bound
    v = build_verdict(r, LAYERS)
    [q] = quant_comparison(v, r)
    line = next(x for x in verdict_sentences(v, LAYERS, r) if x.startswith("Smaller weights"))
    assert not q["beats_bound"] and "Bytes-only upper bound" in line and "beat" not in line
    assert not any("(beaten)" in row for row in _quant_section(v, r))


def test_nothing_quantized_measured_says_why_and_keeps_the_modelled_figure():
    r, _ = _results(1e-3)
    r["measurements"] = r["measurements"][:1]
    r["ceilings"] = r["ceilings"][:1]
    r["settings"]["whatif_series"] = []
    r["settings"]["whatif_missing"] = "--dtypes named no quantized format"
    line = next(x for x in verdict_sentences(build_verdict(r, LAYERS), LAYERS, r) if x.startswith("Smaller weights"))
    assert line.startswith("Smaller weights, *modelled* only") and "upper bound" in line
    assert line.endswith("Not measured: --dtypes named no quantized format.")


def test_no_float_baseline_no_comparison():
    r, _ = _results(1e-3)
    r["measurements"] = r["measurements"][1:]
    r["ceilings"] = r["ceilings"][1:]
    assert quant_comparison(build_verdict(r, LAYERS), r) == []


def test_head_and_lora_stay_float_by_default_and_quantize_option_changes_it():
    from roofline_fixtures import RWKV7_SMALL

    layers = layers_of(RWKV7_SMALL)
    r = new_results("analyze", settings={"tokens": [1]})
    from rwkvprobe.model.profile import profile_json

    r["profile"] = profile_json(layers)
    r["bandwidth"] = {"runs": [{"kernels": {"read": {"best_gbps": 10.0}}}]}
    ceil = {"backend": "onnxruntime", "peak_gflops": 1000.0, "overhead_seconds": 1e-7, "gemv_gbps": 9.0}
    r["ceilings"] = [dict(ceil, dtype="fp32"), dict(ceil, dtype="int4")]
    r["measurements"] = []
    for layer in layers.layers:  # fp32 takes 1 ms a call, int4 0.25 ms, for every shape
        for dtype, t, bpw in (("fp32", 1e-3, 4.0), ("int4", 0.25e-3, 0.640625)):
            nbytes = layer.k * layer.n * bpw + 4 * (layer.k + layer.n)
            r["measurements"].append({
                "backend": "onnxruntime", "dtype": dtype, "m": 1, "k": layer.k, "n": layer.n, "flops": 2.0 * layer.k * layer.n,
                "bytes": nbytes, "bytes_per_weight": bpw, "check": {"ok": True}, "timing": {"median_seconds": t},
                "error": None})
    [q] = quant_comparison(build_verdict(r, layers), r)
    assert q["quantized_kinds"] == ["att", "ffn"] and q["float_kinds"] == ["head", "lora"]
    by_name = {x["layer"]: x for x in q["layers"]}
    assert not by_name["head"]["quantized"] and by_name["head"]["measured_seconds"] == 1e-3
    assert by_name["ffn.key"]["quantized"] and by_name["ffn.key"]["measured_seconds"] == 0.25e-3
    other = q["baseline_seconds"] - sum(x.count * 1e-3 for x in layers.layers)
    expected = other + sum(x.count * (0.25e-3 if x.kind in ("att", "ffn") else 1e-3) for x in layers.layers)
    assert q["measured_seconds"] == pytest.approx(expected)

    r["settings"]["quantize"] = ["att", "ffn", "lora", "head"]
    [everything] = quant_comparison(build_verdict(r, layers), r)
    assert everything["float_kinds"] == [] and everything["measured_seconds"] < q["measured_seconds"]


def _rwkv7_results(int4_seconds_of, fp32_seconds_of, int4_peak=100.0):
    """RWKV7_SMALL with onnxruntime fp32 and int4-a8 points (every shape), at chosen times."""
    from roofline_fixtures import RWKV7_SMALL

    from rwkvprobe.model.profile import profile_json

    layers = layers_of(RWKV7_SMALL)
    r = new_results("analyze", settings={"tokens": [1]})
    r["profile"] = profile_json(layers)
    r["bandwidth"] = {"runs": [{"kernels": {"read": {"best_gbps": 10.0}}}]}
    ceil = {"backend": "onnxruntime", "peak_gflops": 1000.0, "overhead_seconds": 1e-9, "gemv_gbps": 9.0}
    r["ceilings"] = [dict(ceil, dtype="fp32"), dict(ceil, dtype="int4-a8", peak_gflops=int4_peak)]
    r["measurements"] = []
    for layer in layers.unique_shapes():
        k, n = layer
        for dtype, t, bpw in (("fp32", fp32_seconds_of(k, n), 4.0), ("int4-a8", int4_seconds_of(k, n), 0.640625)):
            r["measurements"].append({
                "backend": "onnxruntime", "dtype": dtype, "m": 1, "k": k, "n": n, "flops": 2.0 * k * n,
                "bytes": k * n * bpw + 4 * (k + n), "bytes_per_weight": bpw, "format": f"{dtype} (test)",
                "check": {"ok": True}, "timing": {"median_seconds": t}, "error": None})
    return layers, r


def test_quantized_series_counts_the_float_head_in_its_bytes_and_is_kernel_limited():
    # fp32 at its bandwidth roof; int4-a8 at 14% of DRAM bandwidth for every shape (a slow dequantizing kernel)
    layers, r = _rwkv7_results(lambda k, n: (k * n * 0.640625 + 4 * (k + n)) / (0.14 * 10e9),
                               lambda k, n: (k * n * 4 + 4 * (k + n)) / 10e9)
    v = build_verdict(r, layers)
    (s,) = [x for x in v["series"] if x["dtype"] == "int4-a8"]
    rows = {x["layer"]: x for x in s["rows"]}
    assert rows["head"]["kept_float"] and rows["head"]["stored"] == "fp32"
    assert not rows["ffn.key"].get("kept_float") and rows["ffn.key"]["stored"] == "int4-a8"
    d = s["model"]["decode"]
    expected = sum(x.k * x.n * x.count * (0.640625 if x.kind in ("att", "ffn") else 4.0) for x in layers.layers)
    expected += layers.embedding_dim * 4.0
    assert d["weight_bytes_per_token"] == pytest.approx(expected)
    head_bytes = 512 * 1024 * 4.0
    assert d["weight_bytes_per_token"] > head_bytes + sum(x.k * x.n * x.count * 0.640625 for x in layers.layers
                                                         if x.kind in ("att", "ffn"))
    assert s["float_kinds"] == ["head", "lora"] and s["quantized_kinds"] == ["att", "ffn"]
    # the quantized layers are kernel-limited on the roofline; the float head is at its bound
    assert d["share_by_bound"]["kernel-limited"] > 0.5
    assert max(d["share_by_bound"], key=d["share_by_bound"].get) == "kernel-limited"
    # make int4-a8 the fastest series: fp32 att/ffn very slow, its head and low-rank layers at their roof
    def fp32_time(k, n):
        at_roof = (k * n * 4 + 4 * (k + n)) / 10e9
        return at_roof if (k, n) == (512, 1024) or min(k, n) < 64 else 10.0

    layers2, r2 = _rwkv7_results(lambda k, n: (k * n * 0.640625 + 4 * (k + n)) / (0.14 * 10e9), fp32_time)
    lines = verdict_sentences(build_verdict(r2, layers2), layers2, r2)
    assert lines[0].startswith("**RWKV-7 test decode on this machine is kernel-limited**")
    assert "onnxruntime int4-a8, the fastest" in lines[0] and "14% of DRAM bandwidth" in lines[0]
    assert "head and lora" in lines[0] or "head, lora" in lines[0]


def test_float_layer_below_half_its_roofline_counts_as_kernel_limited():
    # fp32 at 47% of the bandwidth roof (the rwkv-1b5 onnxruntime fp32 case: 13.3 of 28.2 GB/s)
    layers, r = _rwkv7_results(lambda k, n: 1.0, lambda k, n: (k * n * 4 + 4 * (k + n)) / (0.47 * 10e9))
    (s,) = [x for x in build_verdict(r, layers)["series"] if x["dtype"] == "fp32"]
    d = s["model"]["decode"]
    big = sum(x.k * x.n * x.count for x in layers.layers if x.kind != "lora")
    # 47% is within the band around the 50% line: 65% of the time counts as kernel-limited, enough to lead
    assert d["share_by_bound"].get("kernel-limited", 0) > 0.6
    assert main_bound(d["share_by_bound"]) == "kernel-limited"
    assert d["kernel_limited_gbps"] == pytest.approx(0.47 * 10, rel=0.02)
    assert big > 0


def test_whatif_series_keep_decode_rows_only_and_are_not_the_headline():
    layers, r = _rwkv7_results(lambda k, n: 1e-9, lambda k, n: (k * n * 4 + 4 * (k + n)) / 10e9)
    r["settings"]["tokens"] = [1, 8]
    r["settings"]["whatif_series"] = [["onnxruntime", "int4-a8"]]
    v = build_verdict(r, layers)
    (s,) = [x for x in v["series"] if x["dtype"] == "int4-a8"]
    assert s["whatif"] and {x["m"] for x in s["rows"]} == {1} and "prefill" not in s["model"]
    lines = verdict_sentences(v, layers, r)
    assert "onnxruntime fp32, the fastest" in lines[0]
    assert any(x.startswith("Smaller weights, measured") and "onnxruntime int4-a8 (test)" in x for x in lines)


def test_a_kept_float_head_above_the_probe_raises_the_quantized_series_ceiling_too():
    """rwkv-1b5, one quick run: onnxruntime fp32's head read 44.8 GB/s against a best probe of 40.0; the fp32 series
    raised its ceiling with a warning, but int8-a8 and int4-a8 (whose head is that same fp32 row) showed it at 112%
    of their own 40.0 GB/s without one. Each series that shows the row now raises its own ceiling and says so."""
    head_shape = (512, 1024)  # RWKV7_SMALL's head

    def fp32(k, n):
        return (k * n * 4 + 4 * (k + n)) / ((11.2 if (k, n) == head_shape else 9.0) * 1e9)
    layers, r = _rwkv7_results(lambda k, n: (k * n * 0.640625 + 4 * (k + n)) / (0.14 * 10e9), fp32)
    v = build_verdict(r, layers)
    for dtype in ("fp32", "int4-a8"):
        (s,) = [x for x in v["series"] if x["dtype"] == dtype]
        assert s["bandwidth_gbps"] == pytest.approx(11.2, rel=1e-3)
        (a,) = s["ceiling_adjustments"]
        assert a["ceiling"] == "bandwidth" and a["layer"] == "head"
        assert any(w.startswith(f"onnxruntime {dtype}: layer head (M=1, 512x1024") and "11.2 GB/s" in w
                   for w in v["ceiling_warnings"])
        for row in s["rows"]:
            if row.get("measured"):
                assert row["attained_gbps"] <= 1.05 * s["bandwidth_gbps"] * (1 + 1e-9), row["layer"]


def _with_fp16(r, fp16_seconds_of):
    """Adds an onnxruntime fp16 series (ceilings and a point for every shape the fp32 series has)."""
    (c32,) = [c for c in r["ceilings"] if c["dtype"] == "fp32"]
    r["ceilings"].append(dict(c32, dtype="fp16"))
    for p in [p for p in r["measurements"] if p["dtype"] == "fp32"]:
        k, n = p["k"], p["n"]
        r["measurements"].append(dict(p, dtype="fp16", bytes=k * n * 2.0 + 4 * (k + n), bytes_per_weight=2.0,
                                      format="fp16 (test)", timing={"median_seconds": fp16_seconds_of(k, n)}))


@pytest.mark.parametrize("fp16_factor, base", [(0.97, "fp32"), (1.03, "fp32"), (0.5, "fp16")])
def test_a_quantized_series_keeps_its_head_at_fp32_where_the_float_series_are_tied(fp16_factor, base):
    """Two quick runs of rwkv-0b4: onnxruntime fp16 and fp32 ran within a few percent of each other, the fastest of
    the two was fp32 in one run and fp16 in the next, and the int4-a8 series read 0.518 and then 0.356 GB of weights a
    token (its head kept at one type, then the other), compared with another series. Tied within noise, the head
    stays at fp32 (the quantized kernels' activation type) whichever is a little faster; a clear lead still counts."""
    def fp32(k, n):
        return (k * n * 4 + 4 * (k + n)) / 10e9
    layers, r = _rwkv7_results(lambda k, n: (k * n * 0.640625 + 4 * (k + n)) / (0.14 * 10e9), fp32)
    _with_fp16(r, lambda k, n: fp16_factor * fp32(k, n))
    v = build_verdict(r, layers)
    (s,) = [x for x in v["series"] if x["dtype"] == "int4-a8"]
    rows = {x["layer"]: x for x in s["rows"]}
    assert s["float_dtype"] == base and rows["head"]["stored"] == base
    expected = sum(x.k * x.n * x.count * (0.640625 if x.kind in ("att", "ffn") else {"fp32": 4.0, "fp16": 2.0}[base])
                   for x in layers.layers)
    assert s["model"]["decode"]["weight_bytes_per_token"] == pytest.approx(expected + layers.embedding_dim * {"fp32": 4.0, "fp16": 2.0}[base])
    (q,) = quant_comparison(v, r)
    assert q["baseline"] == base
