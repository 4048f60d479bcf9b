"""Roofline verdict, model-level estimates, what-ifs and the report, on synthetic measurements.

No hardware is timed here: every "measured" time is written by hand (see roofline_fixtures), and each
expected value is recomputed from the design's formulas, not read back from rwkvprobe.verdict.roofline.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from roofline_fixtures import (
    RWKV4_SMALL,
    RWKV7_SMALL,
    explicit_profile,
    layers_of,
    make_results,
    model_time,
    point,
    series_of,
    work,
)

from rwkvprobe.model.profile import DTYPE_BYTES, layers_from_json
from rwkvprobe.report.markdown import render, verdict_sentences
from rwkvprobe.verdict import roofline
from rwkvprobe.verdict.roofline import CLASSES, RULE, build_verdict, classify, layer_verdict, model_seconds, non_matmul_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
up, down = (lambda x: math.nextafter(x, math.inf)), (lambda x: math.nextafter(x, 0.0))


# ------------------------------------------------------------------------------------------------
# 1. The classification rule


@pytest.mark.parametrize("flops, nbytes, peak, bw, t0, expected", [
    # F/P = 1 s, B/W = 1e-3 s: compute-bound
    (1e12, 1e6, 1e12, 1e9, 1e-6, "compute-bound"),
    # F/P = 1e-6 s, B/W = 1 s: bandwidth-bound
    (1e6, 1e9, 1e12, 1e9, 1e-6, "bandwidth-bound"),
    # F/P = 1e-9, B/W = 1e-9, t0 = 1e-5: overhead-bound
    (1e3, 1.0, 1e12, 1e9, 1e-5, "overhead-bound"),
])
def test_each_class_is_reachable(flops, nbytes, peak, bw, t0, expected):
    assert classify(flops, nbytes, peak, bw, t0) == expected


def test_every_class_appears_in_the_classes_tuple():
    assert set(CLASSES) == {"compute-bound", "bandwidth-bound", "overhead-bound"}


# Terms are exact here: F/P = 2.0 and B/W = 1.0 (or both 1.0 at the ridge point).
@pytest.mark.parametrize("t0, expected", [
    (2.0, "overhead-bound"),            # t0 == max(F/P, B/W): the rule's ">=" makes it overhead-bound
    (up(2.0), "overhead-bound"),        # just above
    (down(2.0), "compute-bound"),       # just below: the larger term wins
    (0.0, "compute-bound"),
])
def test_overhead_boundary_against_compute(t0, expected):
    assert classify(2e9, 1e9, 1e9, 1e9, t0) == expected


@pytest.mark.parametrize("t0, expected", [
    (2.0, "overhead-bound"),
    (up(2.0), "overhead-bound"),
    (down(2.0), "bandwidth-bound"),
])
def test_overhead_boundary_against_bandwidth(t0, expected):
    assert classify(1e9, 2e9, 1e9, 1e9, t0) == expected  # F/P = 1, B/W = 2


def test_ridge_point_is_bandwidth_bound_and_its_neighbours():
    # F/P == B/W exactly: "compute-bound when FLOPs/P > bytes/W", so the tie is bandwidth-bound
    assert classify(1e9, 1e9, 1e9, 1e9, 0.0) == "bandwidth-bound"
    assert classify(up(1e9), 1e9, 1e9, 1e9, 0.0) == "compute-bound"
    assert classify(down(1e9), 1e9, 1e9, 1e9, 0.0) == "bandwidth-bound"
    assert classify(1e9, up(1e9), 1e9, 1e9, 0.0) == "bandwidth-bound"
    assert classify(1e9, down(1e9), 1e9, 1e9, 0.0) == "compute-bound"
    # all three equal: overhead wins every tie
    assert classify(1e9, 1e9, 1e9, 1e9, 1.0) == "overhead-bound"


def test_ridge_point_in_arithmetic_intensity_terms():
    # P = 100 GFLOP/s, W = 10 GB/s: ridge at 10 FLOP/byte
    P, W = 100e9, 10e9
    assert classify(10.0 * 1e6, 1e6, P, W, 0.0) == "bandwidth-bound"
    assert classify(10.5 * 1e6, 1e6, P, W, 0.0) == "compute-bound"
    assert classify(9.5 * 1e6, 1e6, P, W, 0.0) == "bandwidth-bound"


# Priority among equal terms: overhead > bandwidth > compute.
_PRIORITY = {"compute-bound": 0, "bandwidth-bound": 1, "overhead-bound": 2}
_pos = st.floats(min_value=1e-3, max_value=1e12, allow_nan=False, allow_infinity=False)


def _largest_term(terms: dict[str, float]) -> str:
    return max(terms, key=lambda c: (terms[c], _PRIORITY[c]))


@given(flops=_pos, nbytes=_pos, peak=_pos, bw=_pos, t0=st.floats(min_value=0.0, max_value=1e6))
def test_class_is_the_largest_term(flops, nbytes, peak, bw, t0):
    terms = {"compute-bound": flops / peak, "bandwidth-bound": nbytes / bw, "overhead-bound": t0}
    assert classify(flops, nbytes, peak, bw, t0) == _largest_term(terms)


@given(f=st.integers(1, 10**9), b=st.integers(1, 10**9), a=st.integers(-20, 20),
       tie=st.sampled_from(["ridge", "t0=compute", "t0=memory", "all"]))
def test_class_ties_follow_the_rule(f, b, a, tie):
    """Exact ties built with powers of two: F/(F*2^a) and B/(B*2^a) are both exactly 2^-a."""
    scale = 2.0 ** a
    if tie == "ridge":
        peak, bw, t0 = f * scale, b * scale, 0.0
    elif tie == "t0=compute":
        peak, bw, t0 = f * scale, b * scale * 2.0, f / (f * scale)
    elif tie == "t0=memory":
        peak, bw, t0 = f * scale * 2.0, b * scale, b / (b * scale)
    else:
        peak, bw, t0 = f * scale, b * scale, 2.0 ** -a
    terms = {"compute-bound": f / peak, "bandwidth-bound": b / bw, "overhead-bound": t0}
    expected = _largest_term(terms)
    assert classify(f, b, peak, bw, t0) == expected
    assert expected == ("bandwidth-bound" if tie == "ridge" else "overhead-bound")


def test_model_seconds_is_t0_plus_the_larger_term():
    assert model_seconds(2e9, 1e9, 1e9, 1e9, 0.25) == 2.25
    assert model_seconds(1e9, 3e9, 1e9, 1e9, 0.0) == 3.0


# ------------------------------------------------------------------------------------------------
# 2. layer_verdict numbers


def test_layer_verdict_numbers():
    # F = 2 GFLOP, B = 100 MB, t = 0.5 s; P = 10 GFLOP/s, W = 1 GB/s, t0 = 1 ms
    v = layer_verdict(2e9, 1e8, 0.5, 1e10, 1e9, 1e-3)
    assert v["intensity"] == pytest.approx(20.0)
    assert v["attained_gflops"] == pytest.approx(4.0)
    assert v["attained_gbps"] == pytest.approx(0.2)
    # model time over measured time: (t0 + max(F/P, B/W)) / t = (1 ms + 0.2 s) / 0.5 s
    assert v["roofline_fraction"] == pytest.approx(0.402)
    assert v["kernel_limited"] is True
    assert v["bound"] == "compute-bound"  # F/P = 0.2 s > B/W = 0.1 s > t0
    assert v["model_seconds"] == pytest.approx(1e-3 + 0.2)
    assert (v["t_compute"], v["t_memory"], v["t_overhead"]) == pytest.approx((0.2, 0.1, 1e-3))
    assert (v["seconds"], v["flops"], v["bytes"]) == (0.5, 2e9, 1e8)


@pytest.mark.parametrize("flops, nbytes, peak, bw", [
    (2e9, 1e8, 1e10, 1e9),   # compute roof: I = 20 > ridge 10
    (2e6, 1e8, 1e12, 1e10),  # bandwidth slope: I = 0.02 < ridge 100
    (1e9, 1e9, 1e9, 1e9),    # exactly the ridge point
])
def test_layer_measured_at_the_roofline_has_fraction_one(flops, nbytes, peak, bw):
    t = max(flops / peak, nbytes / bw)  # t0 = 0: model time is the roofline time
    v = layer_verdict(flops, nbytes, t, peak, bw, 0.0)
    assert v["roofline_fraction"] == pytest.approx(1.0)
    assert v["model_seconds"] == pytest.approx(t)
    assert v["kernel_limited"] is False


def test_kernel_limited_threshold_is_strictly_below_one_half():
    flops, nbytes, peak, bw = 2e6, 1e8, 1e12, 1e10
    t_roof = nbytes / bw
    assert roofline.KERNEL_LIMITED == 0.5
    at_half = layer_verdict(flops, nbytes, 2 * t_roof, peak, bw, 0.0)
    assert at_half["roofline_fraction"] == pytest.approx(0.5)
    assert at_half["kernel_limited"] is False
    below = layer_verdict(flops, nbytes, 2.01 * t_roof, peak, bw, 0.0)
    assert below["kernel_limited"] is True


def test_overhead_bound_layer_at_its_model_time_is_not_kernel_limited():
    flops, nbytes, peak, bw, t0 = 2.0 * 16 * 512, 4.0 * 16 * 512, 1e11, 1e10, 1e-5  # a tiny LoRA-like call
    t = model_seconds(flops, nbytes, peak, bw, t0)  # measured exactly as the model predicts
    v = layer_verdict(flops, nbytes, t, peak, bw, t0)
    assert v["bound"] == "overhead-bound"
    assert v["kernel_limited"] is False


# ------------------------------------------------------------------------------------------------
# 3. build_verdict: model-level figures from a synthetic results dict

P_GF, W_GB, T0 = 100.0, 10.0, 1e-5


def _shape_factor(k: int, n: int) -> float:
    """A distinct, hand-made 'measured efficiency' per shape (measured = model x factor)."""
    return 1.0 + ((k * 7 + n * 3) % 11) / 10.0


def _measured(m, k, n):
    return model_time(m, k, n, "fp32", P_GF, W_GB, T0) * _shape_factor(k, n)


@pytest.fixture
def rwkv7():
    return layers_of(RWKV7_SMALL)


@pytest.fixture
def rwkv7_results(rwkv7):
    return make_results(rwkv7, tokens=(1, 8), bw_gbps=W_GB, peak_gflops=P_GF, overhead=T0, time_of=_measured)


def test_bandwidth_is_the_best_read_kernel_over_runs(rwkv7, rwkv7_results):
    rwkv7_results["bandwidth"]["runs"].append({"threads": 2, "kernels": {"read": {"best_gbps": 12.5},
                                                                          "copy": {"best_gbps": 99.0}}})
    assert build_verdict(rwkv7_results, rwkv7)["bandwidth_gbps"] == pytest.approx(12.5)


def test_no_bandwidth_or_failed_ceiling_gives_no_series(rwkv7, rwkv7_results):
    no_bw = dict(rwkv7_results, bandwidth=None)
    v = build_verdict(no_bw, rwkv7)
    assert v["series"] == [] and v["bandwidth_gbps"] is None
    failed = dict(rwkv7_results, ceilings=[dict(rwkv7_results["ceilings"][0], peak_gflops=None)])
    assert build_verdict(failed, rwkv7)["series"] == []


def test_rows_cover_every_layer_and_token_count(rwkv7, rwkv7_results):
    s = series_of(build_verdict(rwkv7_results, rwkv7))
    # a chunk of 8 runs the head for its last token only: no M=8 head row
    assert [(r["layer"], r["m"]) for r in s["rows"]] == [(x.name, m) for m in (1, 8) for x in rwkv7.layers
                                                         if m == 1 or x.kind != "head"]
    assert all(r["measured"] and r["status"] == "measured" for r in s["rows"])
    for r in s["rows"]:
        assert r["seconds"] == pytest.approx(_measured(r["m"], r["k"], r["n"]))
        assert (r["flops"], r["bytes"]) == work(r["m"], r["k"], r["n"], "fp32")


def test_decode_seconds_per_token_is_measured_sum_plus_modelled_non_matmul(rwkv7, rwkv7_results):
    d = series_of(build_verdict(rwkv7_results, rwkv7))["model"]["decode"]
    matmul = sum(_measured(1, x.k, x.n) * x.count for x in rwkv7.layers)
    C, S, L = 512, 64, 2
    other_bytes = 2 * C * S * 4 * L + rwkv7.other_params * 4
    expected = matmul + other_bytes / (W_GB * 1e9)
    assert d["matmul_seconds"] == pytest.approx(matmul, rel=1e-12)
    assert d["non_matmul_seconds"] == pytest.approx(other_bytes / (W_GB * 1e9), rel=1e-12)
    assert d["seconds_per_token"] == pytest.approx(expected, rel=1e-12)
    assert d["tokens_per_second"] == pytest.approx(1.0 / expected, rel=1e-12)
    assert d["modelled_matmul_seconds"] == 0.0
    assert d["weight_bytes_per_token"] == rwkv7.weight_bytes_per_token("fp32")
    # matmul weight bytes over matmul time (no embedding row, no modelled non-matmul part)
    matmul_weights = sum(x.k * x.n * 4 * x.count for x in rwkv7.layers)
    assert d["weight_gbps_attained"] == pytest.approx(matmul_weights / matmul / 1e9)
    assert d["fully_measured"] is True


def test_shares_sum_to_one_and_split_time_correctly(rwkv7, rwkv7_results):
    d = series_of(build_verdict(rwkv7_results, rwkv7))["model"]["decode"]
    assert sum(d["share_by_kind"].values()) == pytest.approx(1.0)
    assert sum(d["share_by_bound"].values()) == pytest.approx(1.0)
    assert set(d["share_by_kind"]) == {"att", "lora", "ffn", "head"}
    assert set(d["share_by_bound"]) <= set(CLASSES) | {"kernel-limited"}
    matmul = sum(_measured(1, x.k, x.n) * x.count for x in rwkv7.layers)
    for kind in ("att", "lora", "ffn", "head"):
        part = sum(_measured(1, x.k, x.n) * x.count for x in rwkv7.layers if x.kind == kind)
        assert d["share_by_kind"][kind] == pytest.approx(part / matmul)
    by_bound = {}
    for x in rwkv7.layers:
        f, b = work(1, x.k, x.n, "fp32")
        c = classify(f, b, P_GF * 1e9, W_GB * 1e9, T0)
        # a layer between 40% and 60% of its roofline (1 / its shape factor) counts partly as kernel-limited
        kl = min(1.0, max(0.0, (0.6 - 1.0 / _shape_factor(x.k, x.n)) / 0.2))
        by_bound[c] = by_bound.get(c, 0.0) + (1.0 - kl) * _measured(1, x.k, x.n) * x.count
        if kl:
            by_bound["kernel-limited"] = by_bound.get("kernel-limited", 0.0) + kl * _measured(1, x.k, x.n) * x.count
    assert d["share_by_bound"] == pytest.approx({c: t / matmul for c, t in by_bound.items()})
    # the fixture is built so that LoRA is overhead-bound and the rest bandwidth-bound (one shape at 53% of its
    # roofline, partly kernel-limited)
    assert set(d["share_by_bound"]) - {"kernel-limited"} == {"bandwidth-bound", "overhead-bound"}
    assert max(d["share_by_bound"], key=d["share_by_bound"].get) == "bandwidth-bound"


def test_prefill_tokens_per_second(rwkv7, rwkv7_results):
    (pre,) = series_of(build_verdict(rwkv7_results, rwkv7))["model"]["prefill"]
    # every layer at M=8, except the head: the logits of the chunk's last token only, its decode (M=1) time
    head = next(x for x in rwkv7.layers if x.kind == "head")
    t = sum(_measured(8, x.k, x.n) * x.count for x in rwkv7.layers if x is not head) + _measured(1, head.k, head.n)
    assert pre["chunk"] == 8
    assert pre["last_token_seconds"] == pytest.approx(_measured(1, head.k, head.n), rel=1e-12)
    assert pre["matmul_seconds"] == pytest.approx(t, rel=1e-12)
    assert pre["tokens_per_second"] == pytest.approx(8 / t, rel=1e-12)
    assert pre["modelled"] is False


def test_prefill_without_a_decode_row_models_the_head_and_says_so(rwkv7):
    results = make_results(rwkv7, tokens=(8,))
    (pre,) = series_of(build_verdict(results, rwkv7))["model"]["prefill"]
    head = next(x for x in rwkv7.layers if x.kind == "head")
    assert pre["last_token_seconds"] == pytest.approx(_model(1, head), rel=1e-12)
    assert pre["modelled"] is True


def test_a_chunk_runs_the_head_once_and_analyze_plans_no_chunk_head(rwkv7):
    from rwkvprobe.model.profile import LAST_TOKEN_ONLY

    head = next(x for x in rwkv7.layers if x.kind == "head")
    assert "head" in LAST_TOKEN_ONLY and head.chunk_rows(64) == 1 and head.chunk_rows(1) == 1
    assert all(x.chunk_rows(64) == 64 for x in rwkv7.layers if x is not head)
    assert (head.k, head.n) in rwkv7.unique_shapes() and (head.k, head.n) not in rwkv7.unique_shapes(64)


def _model(m, x):
    return model_time(m, x.k, x.n, "fp32", P_GF, W_GB, T0)


def test_failed_missing_and_wrong_points_use_the_model_time(rwkv7, rwkv7_results):
    r = rwkv7_results
    wrong_shape, missing_shape, error_shape, skipped_shape = (512, 2048), (2048, 512), (512, 1024), (512, 8)
    kept = []
    for p in r["measurements"]:
        key = (p["k"], p["n"])
        if p["m"] != 1 or key not in (wrong_shape, missing_shape, error_shape, skipped_shape):
            kept.append(p)
        elif key == wrong_shape:  # wrong result, yet carrying a (huge) timing: it must never count
            kept.append(point("numpy", "fp32", 1, *key, 999.0, ok=False))
        elif key == error_shape:
            kept.append(dict(point("numpy", "fp32", 1, *key, None), check=None, error="RuntimeError: boom"))
        elif key == skipped_shape:
            kept.append(dict(point("numpy", "fp32", 1, *key, None), check=None, skipped="projected 9 s"))
        # missing_shape: no point at all
    r["measurements"] = kept
    s = series_of(build_verdict(r, rwkv7))
    rows = {row["layer"]: row for row in s["rows"] if row["m"] == 1}
    unmeasured = {x.name for x in rwkv7.layers if (x.k, x.n) in (wrong_shape, missing_shape, error_shape,
                                                                  skipped_shape)}
    assert unmeasured == {"ffn.key", "ffn.value", "head", "att.w1", "att.a1", "att.v1"}
    for name, row in rows.items():
        assert row["measured"] is (name not in unmeasured)
    assert rows["ffn.key"]["status"].startswith("WRONG RESULT")
    assert rows["ffn.value"]["status"] == "not measured"
    assert rows["head"]["status"] == "failed: RuntimeError: boom"
    assert rows["att.w1"]["status"] == "skipped: projected 9 s"
    for name in unmeasured:
        x = next(x for x in rwkv7.layers if x.name == name)
        assert rows[name]["seconds"] is None
        assert rows[name]["model_seconds"] == pytest.approx(_model(1, x))
        assert rows[name]["bound"] == classify(*work(1, x.k, x.n, "fp32"), P_GF * 1e9, W_GB * 1e9, T0)

    d = s["model"]["decode"]
    measured = sum(_measured(1, x.k, x.n) * x.count for x in rwkv7.layers if x.name not in unmeasured)
    modelled = sum(_model(1, x) * x.count for x in rwkv7.layers if x.name in unmeasured)
    assert d["modelled_matmul_seconds"] == pytest.approx(modelled, rel=1e-12)
    assert d["matmul_seconds"] == pytest.approx(measured + modelled, rel=1e-12)
    assert d["seconds_per_token"] < 1.0  # the wrong point's 999 s is nowhere
    assert sum(d["share_by_kind"].values()) == pytest.approx(1.0)
    # prefill (M=8): its layers stayed measured, but the head it runs once (M=1) failed: modelled, and so labelled
    assert s["model"]["prefill"][0]["modelled"] is True
    assert s["model"]["prefill"][0]["last_token_seconds"] == pytest.approx(_model(1, next(
        x for x in rwkv7.layers if x.kind == "head")), rel=1e-12)


def test_prefill_with_an_unmeasured_layer_is_marked_modelled(rwkv7, rwkv7_results):
    r = rwkv7_results
    r["measurements"] = [p for p in r["measurements"] if not (p["m"] == 8 and (p["k"], p["n"]) == (512, 2048))]
    (pre,) = series_of(build_verdict(r, rwkv7))["model"]["prefill"]
    t = sum((_model(8, x) if (x.k, x.n) == (512, 2048) else _measured(8, x.k, x.n)) * x.count
            for x in rwkv7.layers if x.kind != "head") + sum(_measured(1, x.k, x.n) for x in rwkv7.layers
                                                            if x.kind == "head")
    assert pre["modelled"] is True
    assert pre["tokens_per_second"] == pytest.approx(8 / t, rel=1e-12)


def test_a_wrong_point_never_becomes_a_time():
    layers = layers_of(explicit_profile(("only", 256, 256, 3)))
    r = make_results(layers, tokens=(1,))
    r["measurements"] = [point("numpy", "fp32", 1, 256, 256, 1e-9, ok=False)]  # "fast and wrong"
    s = series_of(build_verdict(r, layers))
    (row,) = s["rows"]
    assert row["measured"] is False and row["seconds"] is None
    expected = model_time(1, 256, 256, "fp32", P_GF, W_GB, T0) * 3
    assert s["model"]["decode"]["seconds_per_token"] == pytest.approx(expected)
    assert s["model"]["decode"]["modelled_matmul_seconds"] == pytest.approx(expected)


def test_series_are_kept_apart_by_backend_and_dtype(rwkv7):
    r = make_results(rwkv7, tokens=(1,), extra_ceilings=[
        {"backend": "numpy", "dtype": "fp16", "peak_gflops": 50.0, "gemv_gbps": 9.0, "overhead_seconds": 1e-5}])
    v = build_verdict(r, rwkv7)
    assert {(s["backend"], s["dtype"]) for s in v["series"]} == {("numpy", "fp32"), ("numpy", "fp16")}
    fp16 = series_of(v, "numpy", "fp16")
    assert not any(row["measured"] for row in fp16["rows"])  # only fp32 points exist
    assert all(row["bytes"] == work(1, row["k"], row["n"], "fp16")[1] for row in fp16["rows"])


# ------------------------------------------------------------------------------------------------
# 4. What-if arithmetic

BIG = 4096


def nbits_bytes(q: str, k: int, n: int, block: int = 32) -> float:
    """Real bytes of W[K,N] as blockwise MatMulNBits (asymmetric): K padded to whole blocks of packed
    integers, one fp32 scale and one packed zero point per block and column; fp16: 2 bytes a weight."""
    if q == "fp16":
        return 2.0 * k * n
    bits = {"int8": 8, "int4": 4}[q]
    blocks = math.ceil(k / block)
    return blocks * block * bits / 8 * n + blocks * 4 * n + math.ceil(blocks * bits / 8) * n


def quantized_bytes(layer, q: str, dtype: str = "fp32") -> float:
    """A layer's weight bytes in the what-if: att/ffn/custom (the default --quantize) at q; head and low-rank
    kept at the float type, except for the fp16 what-if, which stores every layer at fp16."""
    if q == "fp16" or layer.kind in ("att", "ffn", "custom"):
        return nbits_bytes(q, layer.k, layer.n)
    return layer.k * layer.n * DTYPE_BYTES[dtype]


def _what_if(layers, *, peak, bw=10.0, t0=1e-12, dtype="fp32", factor=1.0, tokens=(1,)):
    r = make_results(layers, tokens=tokens, bw_gbps=bw, peak_gflops=peak, overhead=t0, dtype=dtype,
                     time_of=lambda m, k, n: model_time(m, k, n, dtype, peak, bw, t0) * factor)
    return series_of(build_verdict(r, layers), dtype=dtype)["model"]


@pytest.mark.parametrize("factor", [1.0, 2.0])  # 2.0: a kernel at half the roofline keeps its efficiency
def test_what_if_bandwidth_bound_speedup_follows_bytes(factor):
    layers = layers_of(explicit_profile(("big", BIG, BIG, 3)))
    model = _what_if(layers, peak=1e9, factor=factor)  # P huge, t0 tiny: purely bandwidth-bound
    # at half its roofline a layer sits on the kernel-limited line: half its time counts each way
    expected = {"bandwidth-bound": 1.0} if factor == 1.0 else {"bandwidth-bound": 0.5, "kernel-limited": 0.5}
    assert model["decode"]["share_by_bound"] == pytest.approx(expected)
    assert model["decode"]["non_matmul_seconds"] == 0.0
    wi = model["what_if"]
    assert set(wi) == {"fp16", "int8", "int4"}
    assert wi["fp16"]["speedup"] == pytest.approx(2.0, rel=0.01)
    # real bytes: scales and zero points make int8 1.156 and int4 0.641 bytes a weight
    assert wi["int8"]["speedup"] == pytest.approx(4.0 / 1.15625, rel=0.01)
    assert wi["int4"]["speedup"] == pytest.approx(4.0 / 0.640625, rel=0.01)
    # exactly: weights shrink, activations (M*K + M*N at fp32) do not
    act = 4.0 * (BIG + BIG)
    for q in ("fp16", "int8", "int4"):
        expected = (BIG * BIG * 4.0 + act) / (nbits_bytes(q, BIG, BIG) + act)
        assert wi[q]["speedup"] == pytest.approx(expected, rel=1e-6)
        assert wi[q]["tokens_per_second"] == pytest.approx(1 / wi[q]["seconds_per_token"])
        assert wi[q]["seconds_per_token"] == pytest.approx(model["decode"]["seconds_per_token"] / wi[q]["speedup"])


def test_what_if_compute_bound_speedup_is_one():
    layers = layers_of(explicit_profile(("big", BIG, BIG, 3)))
    model = _what_if(layers, peak=0.1)  # P = 0.1 GFLOP/s: F/P = 0.34 s >> B/W = 6.7 ms
    assert model["decode"]["share_by_bound"] == {"compute-bound": 1.0}
    for q in ("fp16", "int8", "int4"):
        assert model["what_if"][q]["speedup"] == pytest.approx(1.0, abs=1e-12)


def test_what_if_caps_at_the_compute_roof_when_quantization_crosses_the_ridge():
    # P = 10 GFLOP/s, W = 10 GB/s: ridge 1 FLOP/byte. fp32 M=1 is ~0.5 FLOP/byte (bandwidth-bound);
    # at int8 it is ~2 FLOP/byte, compute-bound, so the speed-up stops at about 2, not 4.
    layers = layers_of(explicit_profile(("big", BIG, BIG, 1)))
    wi = _what_if(layers, peak=10.0)["what_if"]
    base = (BIG * BIG * 4.0 + 8.0 * BIG) / 10e9
    assert wi["fp16"]["speedup"] == pytest.approx(base / ((BIG * BIG * 2.0 + 8.0 * BIG) / 10e9))
    assert wi["int8"]["speedup"] == pytest.approx(base / (2.0 * BIG * BIG / 10e9))
    assert wi["int4"]["speedup"] == pytest.approx(wi["int8"]["speedup"])
    assert wi["int8"]["speedup"] == pytest.approx(2.0, rel=0.01)


def test_what_if_mixed_bandwidth_and_overhead_is_in_between():
    t0 = 1e-4
    layers = layers_of(explicit_profile(("big", BIG, BIG, 1), ("tiny", 16, 16, 100)))
    model = _what_if(layers, peak=1e9, t0=t0)
    assert set(model["decode"]["share_by_bound"]) == {"bandwidth-bound", "overhead-bound"}
    W = 10e9

    def t(k, n, e):
        return t0 + (k * n * e + 4.0 * (k + n)) / W

    base = t(BIG, BIG, 4.0) + 100 * t(16, 16, 4.0)
    for q in ("int8", "int4"):
        expected = base / (t(BIG, BIG, nbits_bytes(q, BIG, BIG) / BIG**2) + 100 * t(16, 16, nbits_bytes(q, 16, 16) / 256))
        got = model["what_if"][q]["speedup"]
        assert got == pytest.approx(expected, rel=1e-9)
        assert 1.0 < got < (4.0 if q == "int8" else 8.0)


def test_what_if_keeps_the_non_matmul_time(rwkv7):
    model = _what_if(rwkv7, peak=1e9, bw=10.0, t0=1e-12)
    other = model["decode"]["non_matmul_seconds"]
    assert other > 0
    W = 10e9
    for q in ("int8", "int4"):
        mm = sum((1e-12 + (quantized_bytes(x, q) + 4.0 * (x.k + x.n)) / W) * x.count for x in rwkv7.layers)
        assert model["what_if"][q]["seconds_per_token"] == pytest.approx(mm + other, rel=1e-9)
        # the unchanged RNN state and vectors keep the speed-up below the weight bytes ratio
        assert model["what_if"][q]["speedup"] < model["what_if"][q]["bytes_ratio"]


@pytest.mark.parametrize("dtype, expected", [
    ("fp32", {"fp16", "int8", "int4"}),
    ("fp16", {"int8", "int4"}),   # no what-if to a type as wide as the series' own
    ("bf16", {"int8", "int4"}),
])
def test_what_if_bytes_ratios_and_only_narrower_types(rwkv7, dtype, expected):
    wi = _what_if(rwkv7, peak=100.0, t0=1e-5, dtype=dtype)["what_if"]
    assert set(wi) == expected
    base = sum(x.k * x.n * DTYPE_BYTES[dtype] * x.count for x in rwkv7.layers)
    for q in expected:
        ratio = base / sum(quantized_bytes(x, q, dtype) * x.count for x in rwkv7.layers)
        assert wi[q]["bytes_ratio"] == pytest.approx(ratio)
    # the head and the low-rank matrices stay float: int4 saves less than its bytes per weight alone
    assert wi["int4"]["bytes_ratio"] < DTYPE_BYTES[dtype] / 0.640625


def test_no_what_if_or_decode_without_m1(rwkv7):
    model = _what_if(rwkv7, peak=100.0, t0=1e-5, tokens=(8,))
    assert "decode" not in model and "what_if" not in model
    assert [p["chunk"] for p in model["prefill"]] == [8]


# ------------------------------------------------------------------------------------------------
# 5. non_matmul_bytes


def test_non_matmul_bytes_rwkv7(rwkv7):
    C, S, L = 512, 64, 2
    other_params = L * 19 * C + 4 * C  # v7 vectors per block, plus ln0 and ln_out
    assert rwkv7.other_params == other_params
    for dtype in ("fp32", "fp16"):
        assert non_matmul_bytes(rwkv7, dtype) == 2 * C * S * 4 * L + other_params * DTYPE_BYTES[dtype]
    # quantized-weight formats keep their vectors (norms, mixes, decays) in fp32
    for dtype in ("int8", "int4", "int8-a8"):
        assert non_matmul_bytes(rwkv7, dtype) == 2 * C * S * 4 * L + other_params * 4


def test_non_matmul_bytes_rwkv4_state_is_five_vectors():
    v4 = layers_of(RWKV4_SMALL)
    C, L = 512, 2
    assert non_matmul_bytes(v4, "fp32") == 2 * 5 * C * 4 * L + v4.other_params * 4
    # no H x S x S matrix state: far smaller than a v7 of the same width and depth
    v7 = layers_of(RWKV7_SMALL)
    assert non_matmul_bytes(v4, "fp32") - v4.other_params * 4 < non_matmul_bytes(v7, "fp32") - v7.other_params * 4


def test_non_matmul_bytes_explicit_layers_is_zero():
    assert non_matmul_bytes(layers_of(explicit_profile(("a", 64, 64, 2))), "fp32") == 0.0


def test_layers_round_trip_through_the_results_profile(rwkv7, rwkv7_results):
    back = layers_from_json(rwkv7_results["profile"])
    assert back.layers == rwkv7.layers
    assert back.other_params == rwkv7.other_params
    assert non_matmul_bytes(back, "fp32") == non_matmul_bytes(rwkv7, "fp32")
    assert back.weight_bytes_per_token("fp32") == rwkv7.weight_bytes_per_token("fp32")


# ------------------------------------------------------------------------------------------------
# 6. The report


def test_render_writes_report_and_valid_pngs(tmp_path, rwkv7_results):
    path = render(rwkv7_results, tmp_path)
    assert path == tmp_path / "report.md"
    text = path.read_text(encoding="utf-8")
    assert "**RWKV-7 test decode on this machine is bandwidth-bound**" in text
    assert f"Rule: {RULE}" in text
    assert "## Quantization what-if (*modelled*)" in text
    assert "Prefill in chunks of 8 tokens" in text
    for name in ("roofline.png", "layers.png", "share.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 1000
        assert f"]({name})" in text


@pytest.mark.parametrize("peak, t0, main", [
    (1e-3, 1e-12, "compute-bound"),
    (1e9, 1e-12, "bandwidth-bound"),
    (1e9, 1.0, "overhead-bound"),
])
def test_verdict_sentence_names_the_dominant_bound(rwkv7, peak, t0, main):
    r = make_results(rwkv7, tokens=(1,), peak_gflops=peak, overhead=t0)
    v = build_verdict(r, rwkv7)
    sentences = verdict_sentences(v, rwkv7, r)
    assert sentences[0].startswith(f"**RWKV-7 test decode on this machine is {main}**: 100% of")
    advice = {"compute-bound": "would speed up decode; weights smaller than numpy fp32's alone would not",
              "bandwidth-bound": "would not speed up decode by itself",
              "overhead-bound": "Per-call overhead dominates"}[main]
    assert any(advice in s for s in sentences)


def _only_wrong(layers):
    r = make_results(layers, tokens=(1,))
    r["measurements"] = [point("numpy", "fp32", 1, 256, 256, None, ok=False)]
    return r


def test_report_says_wrong_result(tmp_path):
    layers = layers_of(explicit_profile(("only", 256, 256, 1)))
    r = _only_wrong(layers)
    text = render(r, tmp_path).read_text(encoding="utf-8")
    assert "WRONG RESULT" in text
    assert "**1 measurement(s) gave WRONG results**" in text
    assert "modelled" in text


def test_verdict_does_not_call_a_fully_modelled_decode_measured():
    layers = layers_of(explicit_profile(("only", 256, 256, 1)))
    r = _only_wrong(layers)
    first = verdict_sentences(build_verdict(r, layers), layers, r)[0]
    assert "modelled" in first or "measured" not in first


def test_verdict_without_decode_does_not_claim_nothing_was_measured(rwkv7):
    r = make_results(rwkv7, tokens=(8,))
    sentences = verdict_sentences(build_verdict(r, rwkv7), rwkv7, r)
    assert not any("No backend produced a checked measurement" in s for s in sentences)
    (pre,) = [s for s in sentences if s.startswith("Prefill")]
    assert "partly modelled: the head, run once for the chunk's last token, at its roofline time" in pre


def test_a_measured_non_matmul_block_replaces_the_bytes_model(rwkv7, rwkv7_results):
    """When analyze timed the non-matmul block for a series, decode uses it (and says so); other series keep
    the bytes-over-bandwidth model."""
    import copy

    series = series_of(build_verdict(rwkv7_results, rwkv7))
    results = copy.deepcopy(rwkv7_results)
    results["nonmatmul"] = [{"backend": series["backend"], "dtype": series["dtype"], "seconds_per_token": 0.0123,
                             "seconds_per_block": 0.0123 / 2, "blocks": 2},
                            {"backend": "elsewhere", "dtype": series["dtype"], "seconds_per_token": 9.0}]
    d = series_of(build_verdict(results, rwkv7))["model"]["decode"]
    base = series["model"]["decode"]
    assert d["non_matmul_measured"] and not base["non_matmul_measured"]
    assert d["non_matmul_seconds"] == 0.0123
    assert d["seconds_per_token"] == pytest.approx(base["matmul_seconds"] + 0.0123, rel=1e-12)


def test_quantized_series_use_the_fp32_non_matmul_block(rwkv7, rwkv7_results):
    from rwkvprobe.verdict.roofline import nonmatmul_entry

    results = {"nonmatmul": [{"backend": "torch", "dtype": "fp32", "seconds_per_token": 0.01},
                             {"backend": "torch", "dtype": "bf16", "seconds_per_token": 0.02}]}
    assert nonmatmul_entry(results, "torch", "int4")["seconds_per_token"] == 0.01
    assert nonmatmul_entry(results, "torch", "bf16")["seconds_per_token"] == 0.02
    assert nonmatmul_entry(results, "torch", "fp16") is None and nonmatmul_entry(results, "numpy", "fp32") is None


def test_prefill_with_the_timed_sequential_state_update_is_not_an_upper_bound(rwkv7, rwkv7_results):
    import copy

    results = copy.deepcopy(rwkv7_results)
    (plain,) = series_of(build_verdict(results, rwkv7))["model"]["prefill"]
    assert plain["with_state"] is False  # numpy: no timed block, matmuls only
    results["nonmatmul"] = [{"backend": "numpy", "dtype": "fp32", "seconds_per_token": 0.001,
                             "seq": {"8": {"chunk": 8, "seconds_per_chunk": 0.004}}}]
    (pre,) = series_of(build_verdict(results, rwkv7))["model"]["prefill"]
    assert pre["with_state"] and pre["state_seconds"] == 0.004
    assert pre["seconds"] == pytest.approx(plain["matmul_seconds"] + 0.004)
    assert pre["tokens_per_second"] == pytest.approx(8 / (plain["matmul_seconds"] + 0.004))
    sentence = next(s for s in verdict_sentences(build_verdict(results, rwkv7), rwkv7, results) if s.startswith("Prefill"))
    assert "plus the sequential state update" in sentence and "upper bound" not in sentence
    assert "in a forward pass's layers" not in sentence  # a bare block's figure
    results["nonmatmul"][0]["seq"]["8"]["method"] = "layer-pass"
    (pre,) = series_of(build_verdict(results, rwkv7))["model"]["prefill"]
    assert pre["state_method"] == "layer-pass" and pre["state_seconds"] == 0.004
    sentence = next(s for s in verdict_sentences(build_verdict(results, rwkv7), rwkv7, results) if s.startswith("Prefill"))
    assert "a chunk, timed as the reference loops over the chunk's tokens in a forward pass's layers" in sentence
    sentence = next(s for s in verdict_sentences(build_verdict(rwkv7_results, rwkv7), rwkv7, rwkv7_results)
                    if s.startswith("Prefill"))
    assert "at most" in sentence and "an upper bound" in sentence


RWKV6_SMALL = {"name": "RWKV-6 test", "source": "synthetic (tests)", "version": 6, "n_layer": 2, "n_embd": 256,
               "vocab_size": 1024, "head_size": 64, "lora": {"mix": 32, "decay": 64}}


def test_a_batched_layer_is_judged_and_counted_by_its_one_call(tmp_path):
    from rwkvprobe.verdict.validation import prediction

    ll = layers_of(RWKV6_SMALL)
    r = make_results(ll, tokens=(1,), bw_gbps=W_GB, peak_gflops=P_GF, overhead=T0, time_of=_measured)
    assert not any((p["k"], p["n"]) == (32, 256) for p in r["measurements"])  # no point times one matrix alone
    s = series_of(build_verdict(r, ll))
    (row,) = [x for x in s["rows"] if x["layer"] == "att.maa_w2"]
    assert (row["k"], row["n"], row["count"], row["batch"]) == (32, 5 * 256, 2, 5)
    assert row["seconds"] == pytest.approx(_measured(1, 32, 5 * 256))
    assert s["model"]["decode"]["matmul_seconds"] == pytest.approx(
        sum(_measured(1, *x.call_shape) * x.calls for x in ll.layers), rel=1e-12)
    # the prediction validate compares with the real pass's profile is per weight matrix, as the profiler counts
    per_call = prediction(r, ll, "numpy", "fp32")["per_call"]
    assert per_call["32x256"] == pytest.approx(_measured(1, 32, 5 * 256) / 5) and "32x1280" not in per_call
    text = render(r, tmp_path).read_text(encoding="utf-8")
    assert "| att.maa_w2 | 1 | 32x1280 (5 32x256 matrices in one call) | 2 |" in text


def test_heavy_points_are_the_headlines_decode_points_by_their_share_of_its_matmul_time(rwkv7, rwkv7_results):
    per_token: dict = {}
    for x in rwkv7.layers:
        per_token[x.call_shape] = per_token.get(x.call_shape, 0.0) + _measured(1, *x.call_shape) * x.calls
    total = sum(per_token.values())
    expected = sorted(((("numpy", "fp32", 1, *shape), t / total) for shape, t in per_token.items()
                       if t / total >= roofline.HEAVY_SHARE), key=lambda kv: -kv[1])
    got = roofline.heavy_points(rwkv7_results, rwkv7)
    assert [key for key, _ in got] == [key for key, _ in expected] and expected
    assert [share for _, share in got] == pytest.approx([share for _, share in expected])
    assert len(got) < len(per_token)  # the low-rank matrices carry less than a tenth each


def test_series_heavy_points_take_every_series_heaviest_points_in_turns(rwkv7, rwkv7_results):
    """Two series (numpy fp32, and a torch fp32 whose head is made 6x slower than numpy's): every series' decode
    points carrying a tenth or more of its own matmul time, each series' heaviest first (the larger share first), then
    each one's second, and so on; a series' shares are of its own time. With one series they are heavy_points'."""
    assert roofline.series_heavy_points(rwkv7_results, rwkv7) == roofline.heavy_points(rwkv7_results, rwkv7)
    head = max(rwkv7.unique_shapes(), key=lambda s: s[0] * s[1])

    def torch_time(m, k, n):
        return _measured(m, k, n) * (6.0 if (k, n) == head else 1.0)
    other = make_results(rwkv7, tokens=(1, 8), bw_gbps=W_GB, peak_gflops=P_GF, overhead=T0, time_of=torch_time,
                         backend="torch")
    rwkv7_results["ceilings"] += other["ceilings"]
    rwkv7_results["measurements"] += other["measurements"]

    def shares(backend, time_of):
        per_token: dict = {}
        for x in rwkv7.layers:
            per_token[x.call_shape] = per_token.get(x.call_shape, 0.0) + time_of(1, *x.call_shape) * x.calls
        total = sum(per_token.values())
        return sorted((((backend, "fp32", 1, *shape), t / total) for shape, t in per_token.items()
                       if t / total >= roofline.HEAVY_SHARE), key=lambda kv: -kv[1])
    a, b = shares("numpy", _measured), shares("torch", torch_time)
    assert b[0][0][3:] == head and b[0][1] > a[0][1]  # torch's head carries more of torch's time than anything of numpy's
    expected = []
    for i in range(max(len(a), len(b))):
        expected += sorted([x[i] for x in (a, b) if i < len(x)], key=lambda kv: -kv[1])
    got = roofline.series_heavy_points(rwkv7_results, rwkv7)
    assert [key for key, _ in got] == [key for key, _ in expected] and len(a) >= 2
    assert [share for _, share in got] == pytest.approx([share for _, share in expected])


def test_the_compiler_table_names_a_batched_layers_matrices():
    """The RKNN compiler table shows a batched layer's one call with the matrices it runs, as the layer table does."""
    from rwkvprobe.report.markdown import _compiler_section

    ll = layers_of(RWKV6_SMALL)
    models = [{"dtype": "fp16", "m": 1, "k": k, "n": n, "seconds": 1e-5, "ddr_cycles": 100, "npu_cycles": 50,
               "bound": "bandwidth", "simulator_ok": True, "simulator_rel_err": 0.0} for k, n in ll.unique_shapes()]
    results = {"compiler_estimates": {"label": "RKNN compiler estimate", "toolkit": {"rknn-toolkit2": "2.3.2"},
                                      "target": "rk3588", "clock_mhz": 1000.0, "clock_source": "test",
                                      "models": models}}
    text = "\n".join(_compiler_section(results, ll))
    assert "| fp16 | att.maa_w2 | 32x1280 (5 32x256 matrices in one call) | 2 |" in text
    assert "| fp16 | att.key | 256x256 | 2 |" in text


def test_a_series_whose_backend_held_its_weights_at_fp32_is_judged_on_fp32_bytes(tmp_path):
    """onnxruntime's fp16 on a CPU without an fp16 MatMul kernel converts the weights to fp32 as the session loads
    (its points record weight_dtype fp32 and 4 bytes a weight): every row, measured or modelled, counts 4 bytes a
    weight, a layer reading fp32 bytes at the DRAM bandwidth is bandwidth-bound at 100% of its roofline (not
    kernel-limited at 50%), the smaller-weights what-if starts from those bytes, and the report says why."""
    layers = layers_of(explicit_profile(("att", 512, 512, 4), ("ffn", 512, 2048, 2), ("head", 512, 1024, 1)))
    bw, peak, t0 = 10.0, 100.0, 1e-5

    def fp32_bytes_time(m, k, n):
        if (k, n) == (512, 1024):
            return None  # the head: not measured, modelled
        f, b = work(m, k, n, "fp16")
        return t0 + max(f / (peak * 1e9), (b + k * n * 2) / (bw * 1e9))  # fp32 weights, fp16 A and C

    r = make_results(layers, tokens=(1,), bw_gbps=bw, peak_gflops=peak, overhead=t0, backend="onnxruntime",
                     dtype="fp16", time_of=fp32_bytes_time)
    for p in r["measurements"]:
        f, b = work(p["m"], p["k"], p["n"], "fp16")
        p.update(bytes=b + p["k"] * p["n"] * 2, bytes_per_weight=4.0, weight_dtype="fp32")
    r["measurements"].append(point("onnxruntime", "fp16", 1, 16, 16, 2e-5, bytes_per_weight=4.0, weight_dtype="fp32"))
    s = series_of(build_verdict(r, layers), "onnxruntime", "fp16")
    rows = {x["layer"]: x for x in s["rows"]}
    for name in ("att", "ffn"):
        x = rows[name]
        assert x["held_as"] == "fp32" and x["weight_bytes"] == x["k"] * x["n"] * 4
        assert x["roofline_fraction"] == pytest.approx(1.0, rel=1e-6) and x["bound"] == "bandwidth-bound"
        assert not x["kernel_limited"]
    head = rows["head"]
    assert not head["measured"] and head["weight_bytes"] == 512 * 1024 * 4
    assert head["model_seconds"] == pytest.approx(t0 + (512 * 1024 * 4 + (512 + 1024) * 2) / (bw * 1e9), rel=1e-9)
    text = render(r, tmp_path).read_text(encoding="utf-8")
    assert ("**fp16 weights held as fp32:** onnxruntime has no fp16 MatMul kernel for this CPU and converts the "
            "fp16 weights to fp32 as its session loads") in text
