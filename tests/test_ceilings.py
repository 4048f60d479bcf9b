"""Ceilings that hold (issue 14): a report never shows a layer above its own measured ceiling without a
warning that names the layer and both figures.

Synthetic results only (roofline_fixtures): every time is written by hand, so each expected figure is
recomputed here from the inputs.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from roofline_fixtures import RWKV7_SMALL, layers_of, make_results, model_time, series_of, work

from rwkvprobe.measure.bandwidth import sustained_read_gbps
from rwkvprobe.report.markdown import render, verdict_sentences
from rwkvprobe.verdict.roofline import (
    CEILING_TOLERANCE,
    build_verdict,
    hold_ceilings,
    kernel_share,
    main_bound,
    model_seconds,
)

LAYERS = layers_of(RWKV7_SMALL)


def _check_invariant(verdict: dict) -> None:
    """No measured row above 105% of a ceiling or of its roofline, unless a warning names that layer."""
    for s in verdict["series"]:
        W, P = s["bandwidth_gbps"], s["peak_gflops"]
        for r in s["rows"]:
            if not r.get("measured"):
                continue
            assert r["attained_gbps"] <= CEILING_TOLERANCE * W * (1 + 1e-9), (r, W)
            assert r["attained_gflops"] <= CEILING_TOLERANCE * P * (1 + 1e-9), (r, P)
            assert r["roofline_fraction"] <= CEILING_TOLERANCE * (1 + 1e-9), r
        d = s["model"].get("decode")
        if d:
            assert d["weight_gbps_attained"] <= CEILING_TOLERANCE * W * (1 + 1e-9)
        measured = s.get("measured_ceilings") or {}
        raised = {a["ceiling"] for a in s["ceiling_adjustments"]}
        if W > CEILING_TOLERANCE * measured.get("bandwidth_gbps", W):
            assert "bandwidth" in raised
        if P > CEILING_TOLERANCE * measured.get("peak_gflops", P):
            assert "compute" in raised


def test_consistent_measurements_change_nothing():
    r = make_results(LAYERS, bw_gbps=10.0, peak_gflops=100.0, overhead=1e-5)
    v = build_verdict(r, LAYERS)
    s = series_of(v)
    assert v["ceiling_warnings"] == [] and s["ceiling_adjustments"] == []
    assert s["bandwidth_gbps"] == 10.0 and s["peak_gflops"] == 100.0 and s["overhead_seconds"] == 1e-5
    _check_invariant(v)


def test_a_layer_above_the_probe_raises_the_bandwidth_ceiling_with_a_named_warning():
    # every layer streams at 16 GB/s, but the (disturbed) probe said 10 GB/s: 60% above
    r = make_results(LAYERS, bw_gbps=10.0, peak_gflops=100.0, overhead=0.0,
                     time_of=lambda m, k, n: work(m, k, n, "fp32")[1] / 16e9)
    v = build_verdict(r, LAYERS)
    s = series_of(v)
    (adj,) = [a for a in s["ceiling_adjustments"] if a["ceiling"] == "bandwidth"]
    assert adj["measured"] == pytest.approx(10.0) and adj["attained"] == pytest.approx(16.0)
    assert s["bandwidth_gbps"] == pytest.approx(16.0) and s["measured_ceilings"]["bandwidth_gbps"] == 10.0
    (warning,) = [w for w in v["ceiling_warnings"] if "bandwidth" in w]
    assert f"layer {adj['layer']} " in warning and "16.0 GB/s" in warning and "10.0 GB/s" in warning
    assert "60% above" in warning
    _check_invariant(v)
    # the warning reaches the verdict in plain words, and the report
    text = " ".join(verdict_sentences(v, LAYERS, r))
    assert "ceiling raised" in text and adj["layer"] in text


def test_within_tolerance_is_noise_not_a_new_ceiling():
    r = make_results(LAYERS, bw_gbps=10.0, peak_gflops=100.0, overhead=0.0,
                     time_of=lambda m, k, n: work(m, k, n, "fp32")[1] / 10.4e9)  # 4% above: noise
    v = build_verdict(r, LAYERS)
    assert v["ceiling_warnings"] == [] and series_of(v)["bandwidth_gbps"] == 10.0


def test_a_layer_above_the_peak_raises_the_compute_ceiling():
    # prefill (M=8) layers compute at 150 GFLOP/s against a measured peak of 100
    def t(m, k, n):
        f, b = work(m, k, n, "fp32")
        return max(f / 150e9, b / 10e9)
    r = make_results(LAYERS, bw_gbps=10.0, peak_gflops=100.0, overhead=0.0, tokens=(1, 512), time_of=t)
    v = build_verdict(r, LAYERS)
    s = series_of(v)
    kinds = {a["ceiling"] for a in s["ceiling_adjustments"]}
    assert "compute" in kinds and s["peak_gflops"] == pytest.approx(150.0)
    _check_invariant(v)


def test_a_layer_faster_than_the_overhead_allows_lowers_it():
    # measured overhead 50 µs, but the small layers run in ~model time without it
    r = make_results(LAYERS, bw_gbps=10.0, peak_gflops=100.0, overhead=5e-5,
                     time_of=lambda m, k, n: model_time(m, k, n, "fp32", 100.0, 10.0, 1e-6))
    v = build_verdict(r, LAYERS)
    s = series_of(v)
    (adj,) = s["ceiling_adjustments"]
    assert adj["ceiling"] == "per-call overhead" and adj["measured"] == 5e-5
    # the largest t0 that keeps every layer within 105% of its roofline: min over rows of 1.05 t - max(F/P, B/W)
    expect = min(1.05 * model_time(m, k, n, "fp32", 100.0, 10.0, 1e-6) - (model_time(m, k, n, "fp32", 100.0, 10.0, 0.0))
                 for (k, n) in LAYERS.unique_shapes() for m in (1, 8))
    assert s["overhead_seconds"] == pytest.approx(expect, rel=1e-9) and 1e-6 < expect < 5e-5
    assert "per-call overhead" in v["ceiling_warnings"][0] and adj["layer"] in v["ceiling_warnings"][0]
    _check_invariant(v)


def test_modelled_device_ceilings_are_never_adjusted():
    rows = [{"layer": "x", "m": 1, "k": 10, "n": 10, "measured": True, "seconds": 1e-9, "flops": 200.0, "bytes": 400.0}]
    assert hold_ceilings(rows, 1e9, 1e9, 0.0)  # a real series would be adjusted
    r = make_results(LAYERS, bw_gbps=10.0, peak_gflops=100.0, overhead=0.0,
                     time_of=lambda m, k, n: work(m, k, n, "fp32")[1] / 16e9)
    r["ceilings"][0]["modelled"] = True
    assert build_verdict(r, LAYERS)["ceiling_warnings"] == []


@settings(max_examples=60, deadline=None)
@given(bw=st.floats(1.0, 100.0), peak=st.floats(5.0, 2000.0), t0=st.floats(0.0, 1e-4),
       noise=st.lists(st.floats(0.3, 3.0), min_size=64, max_size=64), seed_bw=st.floats(0.5, 2.0))
def test_noisy_measurements_never_exceed_a_ceiling_without_a_warning(bw, peak, t0, noise, seed_bw):
    """Layers timed anywhere from 3x faster to 3x slower than the model, against a probe that may be
    anywhere from half to twice the truth: every shown figure stays within 105% of its ceiling, and
    every ceiling moved carries its warning."""
    it = iter(noise * 4)

    def t(m, k, n):
        return model_time(m, k, n, "fp32", peak, bw, t0) * next(it)
    r = make_results(LAYERS, bw_gbps=bw * seed_bw, peak_gflops=peak, overhead=t0, time_of=t)
    v = build_verdict(r, LAYERS)
    _check_invariant(v)
    s = series_of(v)
    assert len(v["ceiling_warnings"]) == len(s["ceiling_adjustments"])
    for a, w in zip(s["ceiling_adjustments"], v["ceiling_warnings"]):
        assert f"layer {a['layer']} " in w
    # the model time of every measured row never exceeds its measured time by more than the tolerance
    for row in s["rows"]:
        if row.get("measured"):
            assert model_seconds(row["flops"], row["bytes"], s["peak_gflops"] * 1e9, s["bandwidth_gbps"] * 1e9,
                                 s["overhead_seconds"]) <= CEILING_TOLERANCE * row["seconds"] * (1 + 1e-9)


def test_report_shows_the_warning_and_the_probes(tmp_path):
    r = make_results(LAYERS, bw_gbps=10.0, peak_gflops=100.0, overhead=0.0,
                     time_of=lambda m, k, n: work(m, k, n, "fp32")[1] / 16e9)
    r["bandwidth_probes"] = [{"when": "after the layers", "at_seconds": 30.0, "read_best_gbps": 12.0,
                              "read_avg_gbps": 11.0, "check_ok": True}]
    text = render(r, tmp_path).read_text()
    assert "ceiling raised" in text and "16.0 GB/s" in text
    assert "after the layers" in text and "12.00" in text
    # W is the best of every probe (12), and the layers at 16 still raise it, from 12
    assert "above the measured DRAM bandwidth of 12.0 GB/s" in text
    assert "Stability: 2 bandwidth probes read 10.0-12.0 GB/s" in text


def test_overhead_lowered_only_as_far_as_the_tolerance_needs():
    # one tiny layer sets a raised compute ceiling; t0 keeps what the 5% tolerance allows on it
    rows = [{"layer": "tiny", "m": 1, "k": 128, "n": 768, "measured": True, "seconds": 66e-6,
             "flops": 2 * 128 * 768, "bytes": 1.0}]
    (raise_p, lower_t0) = hold_ceilings(rows, P=0.9e9, W=30e9, t0=7.34e-6)
    assert raise_p["ceiling"] == "compute" and raise_p["attained"] == pytest.approx(2 * 128 * 768 / 66e-6 / 1e9)
    assert lower_t0["ceiling"] == "per-call overhead"
    assert lower_t0["t0"] == pytest.approx(0.05 * 66e-6)  # not 0: the layer may show up to 105%


def test_a_row_kept_at_another_type_still_raises_the_series_bandwidth():
    # ggml's quantized series take the head from the f16 series: if that row reads above W, this series
    # shows it against its own W, so its own W is raised, with its own warning naming the layer
    rows = [{"layer": "head", "m": 1, "k": 1024, "n": 65536, "measured": True, "seconds": 1e-3,
             "flops": 2 * 1024 * 65536, "bytes": 37.4e6, "stored_as": "fp16"},
            {"layer": "ffn.key", "m": 1, "k": 1024, "n": 4096, "measured": True, "seconds": 1e-3,
             "flops": 2 * 1024 * 4096, "bytes": 2.3e6}]
    (adj,) = hold_ceilings(rows, P=1e12, W=35.3e9, t0=0.0)
    assert adj["ceiling"] == "bandwidth" and adj["layer"] == "head" and adj["W"] == pytest.approx(37.4e9)
    # compute and overhead stay the kernel's: a kept row alone changes neither
    assert hold_ceilings([dict(rows[0], seconds=1e-9, bytes=1.0)], P=1e9, W=1e12, t0=1e-3) == []


# ------------------------------------------------------------------------------------------------
# Bandwidth phases: each layer judged at the bandwidth of its moment (the same verdict twice)


def _with_probes(r: dict, probes: list[float], checked: list[bool] | None = None) -> dict:
    """Read probes in GB/s: the first is the full probe before the layers, the rest between and after them."""
    r["bandwidth"]["runs"][0]["kernels"]["read"]["best_gbps"] = probes[0]
    r["bandwidth_probes"] = [{"when": "between layers", "read_best_gbps": gbps,
                              "check_ok": True if checked is None else checked[i + 1]}
                             for i, gbps in enumerate(probes[1:])]
    return r


@pytest.mark.parametrize("probes, expected", [
    ([35.0, 60.0, 35.0], 35.0),
    ([35.0, 60.0, 60.0, 35.0], 35.0),              # an even count: the lower middle, a probe that was read
    ([60.0, 34.0, 36.0, 35.0, 62.0], 36.0),
    ([35.0, 60.0], None),                          # too few to tell bursts from the rule: W applies
    ([20.0, 20.0, 20.0], None),                    # no bursts: W itself
    ([69.3, 72.9, 68.9, 67.9], None),              # within BURSTY of the middle: W, as the next run will find
])
def test_sustained_bandwidth_is_the_middle_probe(probes, expected):
    r = _with_probes(make_results(LAYERS), probes)
    assert sustained_read_gbps(r) == (pytest.approx(expected) if expected else None)


def test_a_probe_with_wrong_values_does_not_count_for_the_sustained_bandwidth():
    r = _with_probes(make_results(LAYERS), [35.0, 35.0, 90.0, 90.0, 90.0], checked=[True, True, False, False, True])
    assert sustained_read_gbps(r) == pytest.approx(35.0)  # 35, 35, 90 checked


def test_a_layer_between_bursts_gets_the_same_verdict_wherever_the_probes_fall():
    """The dev VM's bandwidth: ~35 GB/s with bursts of ~60. A layer reading 28 GB/s between bursts is at 80% of
    what memory gives most of the time, not kernel-limited at 47% of a burst, in a run whose probes caught one
    burst, two, or none. Judged at the probes around it (the old rule), it moved with where the probes fell.
    With too few probes to tell (an older file) it is judged against the best probe, as before."""
    def t(m, k, n):
        return work(m, k, n, "fp32")[1] / 28e9
    verdicts = []
    for probes in ([35.0, 35.0, 60.0, 35.0], [35.0, 35.0, 35.0, 35.0], [60.0, 35.0, 58.0, 34.0, 35.0]):
        r = _with_probes(make_results(LAYERS, bw_gbps=35.0, peak_gflops=1e4, overhead=0.0, time_of=t), probes)
        v = build_verdict(r, LAYERS)
        _check_invariant(v)
        s = series_of(v)
        verdicts.append({(x["layer"], x["m"]): (x["bound"], x["kernel_limited"]) for x in s["rows"] if x["measured"]})
        big = next(x for x in s["rows"] if x["measured"] and x["layer"] == "head" and x["m"] == 1)
        assert big["roofline_fraction"] == pytest.approx(28 / 35, rel=0.02) and not big["kernel_limited"]
        assert s["model"]["decode"]["share_by_bound"] == {"bandwidth-bound": pytest.approx(1.0)}
    assert verdicts[0] == verdicts[1] == verdicts[2]
    old = _with_probes(make_results(LAYERS, bw_gbps=35.0, peak_gflops=1e4, overhead=0.0, time_of=t), [35.0, 60.0])
    head = next(x for x in series_of(build_verdict(old, LAYERS))["rows"] if x["layer"] == "head" and x["m"] == 1)
    assert head["kernel_limited"] and head["roofline_fraction"] == pytest.approx(28 / 60, rel=0.02)


def test_a_layer_timed_in_a_burst_is_judged_at_what_it_read():
    """Sustained 35 GB/s, bursts to 60: the head timed in a burst read 55 GB/s. It is bandwidth-bound at 100% of
    what it read (not 157% of the sustained figure), within the 60 GB/s ceiling: no warning is needed."""
    head_shape = next((x.k, x.n) for x in LAYERS.layers if x.name == "head")

    def t(m, k, n):
        return work(m, k, n, "fp32")[1] / (55e9 if (k, n) == head_shape else 28e9)
    r = _with_probes(make_results(LAYERS, bw_gbps=35.0, peak_gflops=1e4, overhead=0.0, time_of=t),
                     [35.0, 60.0, 35.0, 34.0])
    v = build_verdict(r, LAYERS)
    _check_invariant(v)
    head = next(x for x in series_of(v)["rows"] if x["layer"] == "head" and x["m"] == 1)
    assert head["attained_gbps"] == pytest.approx(55.0)
    assert head["roofline_fraction"] == pytest.approx(1.0, rel=0.02) and head["bound"] == "bandwidth-bound"
    assert v["ceiling_warnings"] == []


def test_the_report_names_the_sustained_bandwidth_where_the_machine_had_bursts(tmp_path):
    def t(m, k, n):
        return work(m, k, n, "fp32")[1] / 28e9
    bursty = _with_probes(make_results(LAYERS, bw_gbps=35.0, peak_gflops=1e4, overhead=0.0, time_of=t),
                          [35.0, 60.0, 35.0, 34.0])
    v = build_verdict(bursty, LAYERS)
    head = " ".join(verdict_sentences(v, LAYERS, bursty))
    assert "80% of the sustained 35.0 GB/s DRAM bandwidth (measured; bursts to 60.0)" in head
    text = render(bursty, tmp_path).read_text()
    assert "came in bursts" in text
    assert "Stability: 4 bandwidth probes read 34.0-60.0 GB/s (spread 76%: the best is the DRAM ceiling, the " \
           "layers are judged at the middle probe, 35.0 GB/s)" in text
    steady = _with_probes(make_results(LAYERS, bw_gbps=35.0, peak_gflops=1e4, overhead=0.0, time_of=t),
                          [35.0, 35.5, 35.0, 34.0])
    v = build_verdict(steady, LAYERS)
    assert "79% of the measured 35.5 GB/s DRAM bandwidth" in " ".join(verdict_sentences(v, LAYERS, steady))
    assert "came in bursts" not in render(steady, tmp_path).read_text()


def test_what_ifs_model_a_layer_at_the_bandwidth_it_was_judged_at():
    """Layers at the sustained 35 GB/s of a machine with bursts to 60: fp16 weights halve a bandwidth-bound
    layer's bytes, so its time, not 1.7x more (remodelled at the burst while its efficiency was taken against the
    sustained figure, the what-if came out 3.4x)."""
    def t(m, k, n):
        return work(m, k, n, "fp32")[1] / 35e9
    r = _with_probes(make_results(LAYERS, bw_gbps=35.0, peak_gflops=1e4, overhead=0.0, time_of=t),
                     [35.0, 60.0, 35.0, 34.0])
    fp16 = series_of(build_verdict(r, LAYERS))["model"]["what_if"]["fp16"]
    assert 1.9 < fp16["speedup"] <= fp16["bytes_ratio"] * (1 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(probes=st.lists(st.floats(10.0, 80.0), min_size=2, max_size=8),
       noise=st.lists(st.floats(0.3, 3.0), min_size=64, max_size=64))
def test_bursts_never_show_a_layer_above_its_ceiling_without_a_warning(probes, noise):
    """Noisy layers under random probes: every shown figure still within 105% of the series' ceilings (or named in
    a warning), each layer within 105% of its own roofline, and none judged above the best probe."""
    it = iter(noise * 4)

    def t(m, k, n):
        return model_time(m, k, n, "fp32", 100.0, 20.0, 1e-5) * next(it)
    r = _with_probes(make_results(LAYERS, bw_gbps=20.0, peak_gflops=100.0, overhead=1e-5, time_of=t), probes)
    v = build_verdict(r, LAYERS)
    _check_invariant(v)
    for row in series_of(v)["rows"]:
        if row.get("sustained_gbps"):
            assert row["sustained_gbps"] <= max(probes) * (1 + 1e-9)


# ------------------------------------------------------------------------------------------------
# A layer near the kernel-limited line counts partly each way (a 0.56 and a 0.50 flipped a third of a decode)


@pytest.mark.parametrize("fraction, share", [(0.30, 1.0), (0.40, 1.0), (0.45, 0.75), (0.50, 0.5), (0.56, 0.2),
                                             (0.60, 0.0), (0.90, 0.0)])
def test_time_by_bound_counts_a_layer_near_the_line_in_proportion(fraction, share):
    """Every layer at one fraction of its roofline (bandwidth-bound shapes): the decode's kernel-limited share is
    kernel_share, the rest stays with the layers' own bound, and the table's mark stays the hard line."""
    def t(m, k, n):
        return model_time(m, k, n, "fp32", 1e4, 20.0, 0.0) / fraction
    v = build_verdict(make_results(LAYERS, bw_gbps=20.0, peak_gflops=1e4, overhead=0.0, time_of=t), LAYERS)
    s = series_of(v)
    rows = [r for r in s["rows"] if r["measured"] and r["m"] == 1]
    assert all(kernel_share(r) == pytest.approx(share) for r in rows)
    assert all(r["kernel_limited"] == (fraction < 0.5) for r in rows)
    shares = s["model"]["decode"]["share_by_bound"]
    assert shares.get("kernel-limited", 0.0) == pytest.approx(share)
    assert shares.get("bandwidth-bound", 0.0) == pytest.approx(1.0 - share)


def test_a_small_change_near_the_line_moves_the_time_by_bound_a_little():
    """The run pair that flipped: layers at 0.56 of their roofline in one run, 0.50 in the next. A hard line moved
    all of their time between two bounds; the band moves 30% of it."""
    def shares(fraction):
        def t(m, k, n):
            return model_time(m, k, n, "fp32", 1e4, 20.0, 0.0) / fraction
        v = build_verdict(make_results(LAYERS, bw_gbps=20.0, peak_gflops=1e4, overhead=0.0, time_of=t), LAYERS)
        return series_of(v)["model"]["decode"]["share_by_bound"]
    a, b = shares(0.56), shares(0.50)
    assert b["kernel-limited"] - a["kernel-limited"] == pytest.approx(0.3)
    assert main_bound(a) == "bandwidth-bound" and main_bound(b) is None


# ------------------------------------------------------------------------------------------------
# The headline names a bound only with a clear lead (a 42/38 split flipped between runs)


@pytest.mark.parametrize("shares, expected", [
    ({"compute-bound": 0.42, "kernel-limited": 0.38, "bandwidth-bound": 0.20}, None),
    ({"compute-bound": 0.50, "bandwidth-bound": 0.50}, None),
    ({"compute-bound": 0.49, "bandwidth-bound": 0.33, "kernel-limited": 0.18}, "compute-bound"),
    ({"compute-bound": 0.59, "bandwidth-bound": 0.41}, "compute-bound"),
    ({"bandwidth-bound": 0.56, "compute-bound": 0.44}, None),
    ({"overhead-bound": 1.0}, "overhead-bound"),
    ({}, None),
])
def test_main_bound_needs_a_clear_lead(shares, expected):
    assert main_bound(shares) == expected


def test_a_split_decode_is_called_mixed_with_every_share():
    # the att matrices at 38% of their roofline (kernel-limited), the big ones at it (bandwidth-bound), the tiny
    # low-rank ones overhead-bound: no bound clearly leads, so none is named
    def t(m, k, n, slow=2.6):
        f, b = work(m, k, n, "fp32")
        return (3e-5 + b / 10e9) * (slow if k == n == 512 else 1.0)
    r = make_results(LAYERS, bw_gbps=10.0, peak_gflops=1e4, overhead=3e-5, time_of=t)
    v = build_verdict(r, LAYERS)
    shares = series_of(v)["model"]["decode"]["share_by_bound"]
    top, second = sorted(shares.values(), reverse=True)[:2]
    assert set(shares) == {"kernel-limited", "bandwidth-bound", "overhead-bound"} and top - second < 0.15, shares
    head = verdict_sentences(v, LAYERS, r)[0]
    assert "is mixed**" in head and all(k in head for k in shares)
    # the att matrices slower still: a kernel-limited majority, named
    r2 = make_results(LAYERS, bw_gbps=10.0, peak_gflops=1e4, overhead=3e-5,
                      time_of=lambda m, k, n: t(m, k, n, slow=3.3))
    assert "is kernel-limited**" in verdict_sentences(build_verdict(r2, LAYERS), LAYERS, r2)[0]
