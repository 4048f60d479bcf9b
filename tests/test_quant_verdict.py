"""The measured quantization verdict: a format's measured decode beside its bytes-only bound."""

import pytest

from roofline_fixtures import explicit_profile, layers_of
from rwkvprobe.report import verdict_sentences
from rwkvprobe.results import new_results
from rwkvprobe.roofline import build_verdict, quant_comparison

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
    from rwkvprobe.analyze import profile_json

    r["profile"] = profile_json(LAYERS)
    r["bandwidth"] = {"runs": [{"kernels": {"read": {"best_gbps": BW / 1e9}}}]}
    ceil = {"backend": "onnxruntime", "peak_gflops": 1000.0, "overhead_seconds": 1e-6, "gemv_gbps": 9.0}
    r["ceilings"] = [dict(ceil, dtype="fp32"), dict(ceil, dtype="int4", peak_gflops=100.0)]
    fp32_t = (K * N * 4 + 8 * K) / BW  # exactly at the bandwidth roof
    r["measurements"] = [_point("fp32", fp32_t, 4.0), _point("int4", int4_seconds, 0.640625)]
    return r, fp32_t


def test_format_at_its_bytes_bound_is_memory_limited():
    bound_t = (K * N * 0.640625 + 8 * K) / BW
    r, fp32_t = _results(bound_t)
    [q] = quant_comparison(build_verdict(r, LAYERS), r)
    assert q["baseline"] == "fp32" and q["dtype"] == "int4"
    assert q["bytes_ratio"] == pytest.approx(4 / 0.640625)
    assert q["bound_speedup"] == pytest.approx(fp32_t / bound_t, rel=1e-3)
    assert q["measured_speedup"] == pytest.approx(q["bound_speedup"], rel=1e-3)
    assert not q["limited_by_kernel"]
    line = next(s for s in verdict_sentences(build_verdict(r, LAYERS), LAYERS, r) if "quantized" in s)
    assert "still bandwidth-bound" in line


def test_slow_dequantization_is_named_as_the_bottleneck():
    r, fp32_t = _results(fp32_t_slow := 0.8 * ((K * N * 4 + 8 * K) / BW))
    [q] = quant_comparison(build_verdict(r, LAYERS), r)
    assert q["measured_speedup"] == pytest.approx(1 / 0.8, rel=1e-3)
    assert q["bound_speedup"] > 5 and q["limited_by_kernel"]
    assert q["effective_gbps"] == pytest.approx(K * N * 0.640625 * 10 / (fp32_t_slow * 10) / 1e9, rel=1e-6)
    line = next(s for s in verdict_sentences(build_verdict(r, LAYERS), LAYERS, r) if "quantized" in s)
    assert "dequantization" in line and "1.25x faster" in line


def test_no_float_baseline_no_comparison():
    r, _ = _results(1e-3)
    r["measurements"] = r["measurements"][1:]
    r["ceilings"] = r["ceilings"][1:]
    assert quant_comparison(build_verdict(r, LAYERS), r) == []


def test_head_and_lora_stay_float_by_default_and_quantize_option_changes_it():
    from roofline_fixtures import RWKV7_SMALL

    layers = layers_of(RWKV7_SMALL)
    r = new_results("analyze", settings={"tokens": [1]})
    from rwkvprobe.analyze import profile_json

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
