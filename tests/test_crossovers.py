"""Crossovers only where real (issue 14): a backend "beats" another only over more than one size on each
side, with differences larger than the combined uncertainty; otherwise the pair is tied within noise.

Synthetic curves only: every time is written here, so each expected answer follows from the inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from rwkvprobe.report.sweep import pair_sentence
from rwkvprobe.verdict import fit

X = [128 * i for i in range(1, 13)]


def test_one_size_that_disagrees_is_a_tie_not_two_crossovers():
    ya = [1.0] * 12
    yb = [1.5] * 12  # A faster everywhere ...
    yb[5] = 0.7  # ... except one size, far outside the noise
    assert fit.crossovers(X, ya, yb, [0.02] * 12, [0.02] * 12) == []
    # the old rule (one size is enough) saw two crossovers there
    assert len(fit.crossovers(X, ya, yb, [0.02] * 12, [0.02] * 12, min_run=1)) == 2


def test_a_real_crossover_with_several_sizes_each_side():
    ya = [1.0] * 12
    yb = [1.5] * 6 + [0.6] * 6
    (c,) = fit.crossovers(X, ya, yb, [0.02] * 12, [0.02] * 12)
    assert c["faster_above"] == "b" and c["between"] == [X[5], X[6]]


def test_two_sizes_each_side_is_enough_and_one_is_not():
    ya = [1.0] * 4
    x = X[:4]
    assert len(fit.crossovers(x, ya, [1.5, 1.5, 0.6, 0.6], [0.02] * 4, [0.02] * 4)) == 1
    assert fit.crossovers(x, ya, [1.5, 1.5, 1.5, 0.6], [0.02] * 4, [0.02] * 4) == []


def test_tied_from():
    ya = [1.0] * 12
    yb = [1.5] * 4 + [1.01] * 8  # A faster at small sizes, tied from the 5th size on
    assert fit.tied_from(X, ya, yb, [0.02] * 12, [0.02] * 12) == X[4]
    assert fit.tied_from(X, ya, [1.5] * 12, [0.02] * 12, [0.02] * 12) is None
    assert fit.tied_from(X, ya, [1.0] * 12, [0.02] * 12, [0.02] * 12) == X[0]
    pair = {"a": "numpy fp32", "b": "onnxruntime fp32", "sizes": X, "crossovers": [],
            "faster": fit.faster_at(X, ya, yb, [0.02] * 12, [0.02] * 12), "tied_from": X[4]}
    text = pair_sentence(pair)
    assert "numpy fp32 is faster than onnxruntime fp32 at the smaller sizes" in text
    assert f"tied within noise from n = {X[4]} on" in text and "beats" not in text


def _sweep(seed: int, scatter: float) -> dict:
    """Three backends with the same true curve (160 GFLOP/s above the small sizes), each point off by a
    random factor (lognormal, ``scatter``) that its own samples do not show (IQR 1%): the issue's case."""
    rng = np.random.default_rng(seed)
    pts = []
    for backend in ("numpy", "torch", "onnxruntime"):
        for s in X:
            f = 2 * s**3
            t = (2e-5 + f / 160e9) * float(np.exp(rng.normal(0, scatter)))
            pts.append({"backend": backend, "dtype": "fp32", "size": s, "m": s, "k": s, "n": s, "flops": f,
                        "bytes": 12 * s * s, "check": {"ok": True},
                        "timing": {"n": 20, "median_seconds": t, "iqr_seconds": 0.01 * t}})
    return fit.summarize_sweep(pts)


@pytest.mark.parametrize("seed", range(8))
def test_tied_backends_scattered_by_drift_show_no_crossover(seed):
    summary = _sweep(seed, 0.12)
    for e in summary["series"]:
        assert e["scatter"] > 0.02  # the drift between sizes is seen, though each point's own IQR is 1%
    for pair in summary["pairs"]:
        assert pair["crossovers"] == [], (seed, pair["a"], pair["b"], pair["crossovers"])
        assert "beats" not in pair_sentence(pair)


def test_scatter_is_zero_without_a_fit():
    assert fit._scatter(None) == 0.0


def _two_series(factor: float):
    from roofline_fixtures import RWKV7_SMALL, layers_of, make_results, model_time, point

    layers = layers_of(RWKV7_SMALL)
    r = make_results(layers, tokens=(1,), bw_gbps=10.0, peak_gflops=100.0, overhead=1e-5,
                     extra_ceilings=[{"backend": "torch", "dtype": "fp32", "peak_gflops": 100.0, "gemv_gbps": 9.0,
                                      "overhead_seconds": 1e-5}])
    for (k, n) in layers.unique_shapes():
        t = model_time(1, k, n, "fp32", 100.0, 10.0, 1e-5) * factor
        r["measurements"].append(point("torch", "fp32", 1, k, n, t))
    for p in r["measurements"]:  # each point's own noise: IQR 2% of its median, 20 samples
        p["timing"].update(n=20, iqr_seconds=0.02 * p["timing"]["median_seconds"])
    return layers, r


@pytest.mark.parametrize("factor, tied", [(1.01, True), (1.3, False)])
def test_the_fastest_series_names_its_ties(factor, tied):
    from rwkvprobe.report.markdown import verdict_sentences
    from rwkvprobe.verdict.roofline import build_verdict

    layers, r = _two_series(factor)
    text = verdict_sentences(build_verdict(r, layers), layers, r)[0]
    assert "(numpy fp32, the fastest" in text
    assert ("tied within noise with torch fp32" in text) is tied


def _with_drift(results: dict, step: float) -> dict:
    """``results`` with a canary beside each point, the machine's speed moving by ``step`` (relative) from each point's
    window to the next (contention.canary, timed as analyze times it), in the points' order."""
    for i, p in enumerate(results["measurements"]):
        p["at"] = 1000.0 + i
        p["contention"] = {"contended": False, "other_share": 0.0, "steal_share": 0.0,
                           "canary_seconds": 1e-4 * ((1.0 + step) if i % 2 else 1.0)}
    return results


def test_machine_sigma_is_the_drift_between_neighbouring_windows():
    from rwkvprobe.verdict.roofline import MACHINE_SIGMA_POINTS, machine_sigma

    _, r = _two_series(1.0)
    assert machine_sigma(r) is None  # no canary recorded (an older results file)
    assert machine_sigma(_with_drift(r, 0.0)) == 0.0
    assert machine_sigma(_with_drift(r, 0.1)) == pytest.approx(1.4826 * np.log(1.1) / np.sqrt(2))
    # a phase that lasts: half the points slow, half fast, one step between them, counts as one step's change
    for i, p in enumerate(r["measurements"]):
        p["contention"]["canary_seconds"] = 1.5e-4 if i < len(r["measurements"]) // 2 else 1e-4
    assert machine_sigma(r) == 0.0
    r["measurements"] = r["measurements"][:MACHINE_SIGMA_POINTS - 1]
    assert machine_sigma(_with_drift(r, 0.1)) is None


@pytest.mark.parametrize("step, tied", [(0.0, False), (0.1, True)])
def test_the_machines_drift_between_windows_ties_series_their_own_samples_would_not(step, tied):
    """Two series 6% apart whose points' own samples spread 2%: the fastest stands alone on a steady machine, and is
    tied with the other where the canary beside the points moved 10% from one window to the next (two quick runs of
    rwkv-0b4 on the dev VM named ggml q8_0 the fastest, then q4_0, each 6% ahead, neither with a tie)."""
    from rwkvprobe.report.markdown import verdict_sentences
    from rwkvprobe.verdict.roofline import build_verdict

    layers, r = _two_series(1.06)
    _with_drift(r, step)
    text = verdict_sentences(build_verdict(r, layers), layers, r)[0]
    assert "(numpy fp32, the fastest" in text
    assert ("tied within noise with torch fp32" in text) is tied
