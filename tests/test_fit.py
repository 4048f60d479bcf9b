"""Fits, model choice, outliers, crossovers and reach sizes on synthetic data with known answers."""

import json
import math

import numpy as np
import pytest

from rwkvprobe.verdict import fit

T0, P, W = 20e-6, 80e9, 12e9  # seconds, FLOP/s, bytes/s


def shapes(ms=(1, 8, "square"), sizes=range(128, 2049, 128)):
    """(size, flops, bytes) of fp32 matmuls: decode-like M=1 and M=8 (bandwidth-bound) and square (compute)."""
    out = []
    for m in ms:
        for s in sizes:
            mm, k, n = (s, s, s) if m == "square" else (m, s, s)
            out.append((s, 2 * mm * k * n, 4 * (k * n + mm * k + mm * n)))
    size, f, b = (np.array(x, float) for x in zip(*out))
    return size, f, b


def noisy(t, seed, rel=0.02):
    return t * np.exp(np.random.default_rng(seed).normal(0, rel, len(t)))


@pytest.mark.parametrize("seed", range(6))
def test_roofline_fit_recovers_t0_p_w_within_5_percent(seed):
    size, f, b = shapes()
    t = noisy(fit.roofline_time(T0, P, W, f, b), seed)
    r = fit.fit_roofline(f, b, t, [0.02] * len(t))
    assert r["ok"]
    got = {"t0": r["t0_seconds"], "P": r["peak_gflops"], "W": r["bandwidth_gbps"]}
    truth = {"t0": T0, "P": P / 1e9, "W": W / 1e9}
    for name, est in got.items():
        assert est["sigma"] is not None and est["sigma"] > 0, name
        assert abs(est["value"] - truth[name]) <= 0.05 * truth[name], (name, est, truth[name])
        assert abs(est["value"] - truth[name]) <= 4 * est["sigma"], (name, est)  # honest error bars
    assert r["peak_gflops"]["status"] == r["bandwidth_gbps"]["status"] == "fitted"
    assert set(r["regime"]) <= {"overhead", "compute", "bandwidth"}
    assert 0.01 < r["rms_log"] < 0.03  # the 2% noise, not more


def test_roofline_fit_exact_data_is_exact():
    size, f, b = shapes()
    r = fit.fit_roofline(f, b, fit.roofline_time(T0, P, W, f, b))
    assert r["t0_seconds"]["value"] == pytest.approx(T0, rel=1e-6)
    assert r["peak_gflops"]["value"] == pytest.approx(P / 1e9, rel=1e-6)
    assert r["bandwidth_gbps"]["value"] == pytest.approx(W / 1e9, rel=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_uncertainty_of_a_large_fixed_cost(seed):
    # t0 dominates the small sizes (a backend that waits ~16 ms for a busy core on every call)
    x = np.arange(128, 2049, 128, dtype=float)
    f, b = 2 * x**3, 12 * x**2
    r = fit.fit_roofline(f, b, noisy(fit.roofline_time(16e-3, 100e9, None, f, b), seed))
    t0 = r["t0_seconds"]
    # 2% noise on the ~5 points t0 dominates: an error of the order of 16 ms * 2% / sqrt(5), not 1e-20 s
    assert 30e-6 < t0["sigma"] < 1e-3
    assert abs(t0["value"] - 16e-3) < 4 * t0["sigma"]
    assert abs(r["peak_gflops"]["value"] - 100) < 4 * r["peak_gflops"]["sigma"]


def test_square_sweep_cannot_see_bandwidth_reports_a_lower_bound():
    size, f, b = shapes(ms=("square",))
    t = noisy(fit.roofline_time(5e-6, 90e9, 10e9, f, b), 1)
    r = fit.fit_roofline(f, b, t)
    assert r["peak_gflops"]["status"] == "fitted"
    assert r["peak_gflops"]["value"] == pytest.approx(90, rel=0.05)
    bw = r["bandwidth_gbps"]
    assert bw["status"] == "lower bound" and bw["value"] is None and bw["points"] == 0
    assert bw["lower_bound"] == pytest.approx(max(b / t) / 1e9)


@pytest.mark.parametrize("seed", range(4))
def test_decode_sweep_has_one_ceiling_and_says_the_split_is_ambiguous(seed):
    # M = 1: every point at ~0.5 FLOP/byte, so F/P and B/W are the same curve: one ceiling, flagged
    size, f, b = shapes(ms=(1,))
    t = noisy(fit.roofline_time(10e-6, 90e9, 10e9, f, b), seed)
    r = fit.fit_roofline(f, b, t)
    assert r["ambiguous"] and "too narrow" in r["note"]
    assert r["peak_gflops"]["status"] == r["bandwidth_gbps"]["status"] == "ambiguous"
    # one rate in two units: 10 GB/s, or 5 GFLOP/s at 2KN FLOPs for ~4KN bytes
    assert r["bandwidth_gbps"]["value"] == pytest.approx(10, rel=0.05)
    assert r["peak_gflops"]["value"] == pytest.approx(5, rel=0.05)
    assert r["bandwidth_gbps"]["sigma"] > 0 and r["peak_gflops"]["sigma"] > 0
    assert r["t0_seconds"]["value"] == pytest.approx(10e-6, rel=0.15)


def test_wide_intensity_range_is_not_ambiguous():
    size, f, b = shapes()
    r = fit.fit_roofline(f, b, noisy(fit.roofline_time(T0, P, W, f, b), 0))
    assert not r["ambiguous"] and r["intensity_range"][1] / r["intensity_range"][0] > 100


@pytest.mark.parametrize("seed", range(3))
def test_power_law_recovers_a_and_p(seed):
    x = np.arange(128, 4097, 128, dtype=float)
    t = noisy(3e-12 * x**2.6, seed)
    r = fit.fit_power_law(x, t)
    assert r["p"]["value"] == pytest.approx(2.6, abs=0.03)
    assert r["a_seconds"]["value"] == pytest.approx(3e-12, rel=0.2)
    assert abs(r["p"]["value"] - 2.6) <= 4 * r["p"]["sigma"]
    assert r["r2_log"] > 0.99


@pytest.mark.parametrize("seed", range(3))
def test_model_choice_picks_the_model_that_made_the_data(seed):
    x = np.arange(128, 4097, 128, dtype=float)
    f, b = 2 * x**3, 12 * x**2
    # a large fixed cost: the curve bends at small sizes, which no power law can follow
    roof = fit.fit_series(x, f, b, noisy(fit.roofline_time(2e-3, 100e9, 10e9, f, b), seed))
    assert roof["comparison"]["preferred"] == "roofline", roof["comparison"]
    # a pure n^2.6: the roofline's n^3 asymptote cannot follow it
    power = fit.fit_series(x, f, b, noisy(3e-12 * x**2.6, seed))
    assert power["comparison"]["preferred"] == "power_law", power["comparison"]


def test_outliers_are_flagged_and_left_out():
    x = np.arange(128, 2049, 128, dtype=float)
    f, b = 2 * x**3, 12 * x**2
    t = noisy(fit.roofline_time(50e-6, 90e9, 10e9, f, b), 3)
    t[5] *= 1.8  # a point that waited for a busy core
    r = fit.fit_series(x, f, b, t)
    assert r["outliers"] == [5]
    assert 5 not in r["used"]
    assert r["roofline"]["peak_gflops"]["value"] == pytest.approx(90, rel=0.05)
    clean = fit.fit_series(x, f, b, noisy(fit.roofline_time(50e-6, 90e9, 10e9, f, b), 3))
    assert clean["outliers"] == []


def test_too_few_points_do_not_crash():
    assert not fit.fit_roofline([1e6], [1e4], [1e-3])["ok"]
    assert not fit.fit_power_law([128], [1e-3])["ok"]
    r = fit.fit_series([128, 256], [4e6, 3e7], [2e5, 8e5], [1e-4, 6e-4])
    assert r["comparison"]["preferred"] in (None, "roofline", "power_law")


# ------------------------------------------------------------------------------------------------
# Crossovers


X = np.arange(128, 4097, 128, dtype=float)


def test_single_crossover_interpolated_with_uncertainty():
    # A: little fixed cost, slow kernel; B: large fixed cost, fast kernel. They cross at x^3 = 4e-4 * 100e9
    ya = 1e-4 + X**3 / 50e9
    yb = 5e-4 + X**3 / 100e9
    truth = (4e-4 * 100e9) ** (1 / 3)
    [c] = fit.crossovers(X, ya, yb)
    assert c["faster_above"] == "b" and c["between"] == [256.0, 384.0]
    assert 0 < c["sigma"] < 128
    assert abs(c["x"] - truth) <= max(2 * c["sigma"], 0.02 * truth)
    # with 2% noise per point the uncertainty grows and still covers the truth
    [cn] = fit.crossovers(X, ya, yb, [0.02] * len(X), [0.02] * len(X))
    assert cn["sigma"] >= c["sigma"] and abs(cn["x"] - truth) <= 2 * cn["sigma"]


def test_crossover_at_a_large_size_like_the_article():
    # 'the NPU beats torch fp32 from n = 2432 +- 64': a fast engine with a large per-call overhead
    npu = 40e-3 + 2 * X**3 / 800e9
    cpu = 0.1e-3 + 2 * X**3 / 80e9
    truth = ((40e-3 - 0.1e-3) / (2 / 80e9 - 2 / 800e9)) ** (1 / 3)
    [c] = fit.crossovers(X, npu, cpu, [0.02] * len(X), [0.02] * len(X))
    assert c["faster_above"] == "a"
    assert abs(c["x"] - truth) <= 2 * c["sigma"] and c["sigma"] < 128


def test_no_crossover():
    ya = 1e-4 + X**3 / 100e9
    assert fit.crossovers(X, ya, 2 * ya) == []
    assert fit.faster_at(X, ya, 2 * ya) == {"first": "a", "first_x": 128.0, "last": "a", "last_x": 4096.0}
    # the same curve within noise: ties, no crossover even where the noise flips the sign
    wobble = ya * (1 + 0.01 * np.sin(X))
    assert fit.crossovers(X, ya, wobble, [0.02] * len(X), [0.02] * len(X)) == []
    assert fit.faster_at(X, ya, wobble, [0.02] * len(X), [0.02] * len(X))["first"] == "tie"


def test_multiple_crossovers():
    ya = 1e-4 + X**3 / 100e9
    yb = ya * np.exp(0.3 * np.sin(X / 400))  # crosses at 400*pi*k
    cs = fit.crossovers(X, ya, yb)
    truths = [400 * math.pi * k for k in (1, 2, 3)]
    assert [c["faster_above"] for c in cs] == ["b", "a", "b"]
    for c, truth in zip(cs, truths):
        assert abs(c["x"] - truth) <= max(2 * c["sigma"], 0.01 * truth), (c, truth)


def test_crossover_through_tied_points_spans_them():
    ya = np.full(len(X), 1.0)
    d = np.linspace(-0.3, 0.3, len(X))  # B slower, then tied for a stretch, then faster
    yb = np.exp(d)
    sig = [0.05] * len(X)
    [c] = fit.crossovers(X, ya, 1 / yb, sig, sig)
    assert c["ties_between"] > 0
    lo, hi = c["between"]
    assert lo < c["x"] < hi and c["sigma"] >= (hi - lo) / math.sqrt(12) * 0.99


def test_crossovers_skip_missing_points():
    ya = list(1e-4 + X**3 / 50e9)
    yb = list(5e-4 + X**3 / 100e9)
    ya[2] = None  # not measured (skipped, failed) at 384
    [c] = fit.crossovers(X, ya, yb)
    assert c["between"] == [256.0, 512.0]


# ------------------------------------------------------------------------------------------------
# Share of peak


def test_reach_sizes_50_and_90_percent_of_peak():
    g = 100 * X**3 / (X**3 + 1000.0**3)  # half its asymptote at x = 1000
    r = fit.reach_sizes(X, g)
    assert r["peak_x"] == 4096 and r["peak_gflops"] == pytest.approx(g[-1])
    half, ninety = r["levels"]
    # g(x) = f * peak  <=>  x^3 = f*peak*1e9 / (100 - f*peak)
    for lv in (half, ninety):
        level = lv["fraction"] * r["peak_gflops"]
        truth = (level * 1000.0**3 / (100 - level)) ** (1 / 3)
        assert not lv["at_start"] and lv["drops_below"] == []
        assert abs(lv["from_x"] - truth) <= max(2 * lv["sigma"], 0.03 * truth), (lv, truth)
    assert half["from_x"] < ninety["from_x"]


def test_reach_already_at_start_and_dropping_below_later():
    g = np.full(len(X), 100.0)
    g[-5:] = 40.0  # falls off a cliff at large sizes (out of cache, say)
    r = fit.reach_sizes(X, g, [0.02] * len(X))
    half, ninety = r["levels"]
    assert half["at_start"] and half["from_x"] == 128
    assert len(half["drops_below"]) == 1 and X[-6] < half["drops_below"][0] < X[-5]


def test_rel_sigma_has_a_floor_and_grows_with_spread():
    assert fit.rel_sigma(None) == fit.SIGMA_FLOOR
    calm = {"n": 100, "median_seconds": 1.0, "iqr_seconds": 0.001}
    noisy_ = {"n": 3, "median_seconds": 1.0, "iqr_seconds": 0.5}
    assert fit.rel_sigma(calm) == fit.SIGMA_FLOOR
    assert fit.rel_sigma(noisy_) > 0.2


def test_summarize_sweep_is_json_ready():
    pts = []
    for backend, (t0, p) in {"numpy": (5e-6, 90e9), "torch": (2e-4, 150e9)}.items():
        for s in range(128, 1025, 128):
            f = 2 * s**3
            t = t0 + f / p
            pts.append({"backend": backend, "dtype": "fp32", "size": s, "m": s, "k": s, "n": s, "flops": f,
                        "bytes": 12 * s * s, "check": {"ok": True},
                        "timing": {"n": 10, "median_seconds": t, "iqr_seconds": 0.01 * t}})
    pts.append({"backend": "numpy", "dtype": "fp32", "size": 2048, "m": 1, "k": 1, "n": 1, "flops": 2, "bytes": 12,
                "skipped": "too slow", "check": None, "timing": None})
    summary = fit.summarize_sweep(pts)
    json.dumps(summary, allow_nan=False)
    assert [s["label"] for s in summary["series"]] == ["numpy fp32", "torch fp32"]
    [pair] = summary["pairs"]
    [c] = pair["crossovers"]
    truth = ((2e-4 - 5e-6) / (2 / 90e9 - 2 / 150e9)) ** (1 / 3)
    assert c["faster_above"] == "b" and abs(c["x"] - truth) < 2 * c["sigma"] + 0.02 * truth


def test_rel_sigma_holds_against_a_third_of_outliers():
    """ggml's 0.05 ms calls with a 4 ms one (a worker thread woken a scheduler tick late) in every few: the IQR
    sees the outliers once they pass a quarter of the samples, the median absolute deviation does not."""
    fast = [0.050e-3, 0.052e-3, 0.049e-3, 0.051e-3, 0.050e-3, 0.053e-3, 0.048e-3, 0.050e-3, 0.051e-3, 0.052e-3,
            0.049e-3, 0.050e-3]
    samples = fast + [4.0e-3] * 5  # 5 of 17: 29% outliers
    s = sorted(samples)
    timing = {"median_seconds": s[8], "n": len(s), "samples": samples, "iqr_seconds": s[12] - s[4]}
    assert timing["iqr_seconds"] > 1e-3  # the IQR is blown by the outliers
    assert fit.rel_sigma(timing) == fit.SIGMA_FLOOR  # the MAD-based sigma: the fast calls', below the floor
    # without samples (an older file) the IQR is all there is
    assert fit.rel_sigma({"median_seconds": s[8], "n": len(s), "iqr_seconds": s[12] - s[4]}) > 1.0
