"""Cost models fitted to a sweep, crossover sizes between backends, and sizes that reach a share of peak.

numpy only (no scipy). Two models are fitted to the median time t of each point, both on log-time
residuals (timing noise is multiplicative), weighted by each point's relative uncertainty:

- roofline with overhead: ``t = t0 + max(F / P, B / W)`` for a call of F FLOPs moving B bytes; t0 is the
  fixed per-call cost, P the compute ceiling (FLOP/s), W the effective bandwidth (bytes/s). The max has a
  kink, so the fit first solves the linear problem for every split of the points into bandwidth-bound
  (low intensity F/B) and compute-bound (high intensity), with t0, 1/P, 1/W >= 0, keeps the best few
  under the true model, and refines them with Levenberg-Marquardt. Uncertainties come from the Jacobian
  at the optimum, scaled by the residual variance (as ``curve_fit`` does with relative sigmas). A ceiling
  that no point reaches (a square sweep is compute-bound at every size, a decode sweep bandwidth-bound)
  cannot be estimated: it is reported as a lower bound, not a value.
- power law, as the seed article fitted its NPU curve: ``t = a * size^p`` (weighted least squares on logs).

The better model is the one with the lower corrected Akaike information criterion (AICc) on the same
points; a difference under 2 is reported as a tie. Points whose log residual under the better model
is far out (robust z above OUTLIER_Z and more than OUTLIER_MIN_REL off) are flagged and left out of the
final fits.

Crossovers are found on the measured curves (medians, interpolated in log-log), not on the fits: a
point where two backends differ by less than NOISE_Z combined sigmas is a tie, and a crossover is a
change of the faster backend between two significant stretches of at least MIN_RUN sizes each: a single
size that disagrees with its neighbours is counted as a tie, not as two crossovers. Each point's sigma
is at least its series' scatter around its own fitted curve (the drift between sizes that the samples
of one point do not show). A crossover's uncertainty combines the propagated noise of the bracketing
points and, when ties lie in between, the width of the tied stretch. Where every size from some n on is
tied, the pair is "tied within noise from n on".
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from rwkvprobe.model.cost import roofline_seconds

#: Relative uncertainty floor of one median time: run-to-run drift the samples of one point do not show.
SIGMA_FLOOR = 0.02
#: Two measured times differ significantly when their log ratio exceeds this many combined sigmas.
NOISE_Z = 2.0
#: A point is an outlier when its log residual exceeds OUTLIER_Z robust sigmas and OUTLIER_MIN_REL.
OUTLIER_Z = 4.0
OUTLIER_MIN_REL = 0.15
#: at most one point in this many is flagged (the worst ones)
MAX_OUTLIER_SHARE = 8
#: Points whose intensities (FLOP/byte) span less than this factor cannot tell compute from bandwidth.
INTENSITY_SPAN = 2.0
#: A crossover needs at least this many significant sizes on each side (one size alone is noise).
MIN_RUN = 2
#: AICc differences below this do not pick a model.
AICC_TIE = 2.0
#: Fractions of its own peak GFLOP/s whose reaching size is reported per backend.
PEAK_FRACTIONS = (0.5, 0.9)


# ------------------------------------------------------------------------------------------------
# Small helpers


def _finite(x) -> float | None:
    """A float for JSON, or None when not finite (results files refuse NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def rel_sigma(timing: dict | None) -> float:
    """Relative standard error of a point's median time, floored at SIGMA_FLOOR.

    Robust: from the samples' median absolute deviation (1.4826 MAD = sigma of a normal), which holds while
    fewer than half of the samples are outliers; the IQR (what older files without samples give) breaks at a
    quarter, and a backend whose threads now and then wake a scheduler tick late (ggml: 0.05 ms calls with a
    4 ms one in every few) would make the whole series look as uncertain as that tick."""
    if not timing or not timing.get("median_seconds"):
        return SIGMA_FLOOR
    n = max(int(timing.get("n") or 1), 1)
    samples = timing.get("samples") or []
    if len(samples) >= 3:
        med = float(np.median(samples))
        sd = 1.4826 * float(np.median(np.abs(np.asarray(samples, float) - med)))
    else:
        sd = (timing.get("iqr_seconds") or 0.0) / 1.349  # IQR of a normal = 1.349 sigma
    se_median = 1.2533 * sd / math.sqrt(n)
    return max(SIGMA_FLOOR, se_median / timing["median_seconds"])


def _weights(t: np.ndarray, sigma) -> np.ndarray:
    s = np.full(t.shape, SIGMA_FLOOR) if sigma is None else np.maximum(np.asarray(sigma, float), 1e-6)
    return 1.0 / s**2


def _aicc(chi2: float, n: int, k: int) -> float | None:
    """Corrected AIC for a least-squares fit with unknown noise scale (Burnham & Anderson)."""
    if n - k - 1 <= 0 or chi2 <= 0:
        return None if chi2 > 0 or n - k - 1 <= 0 else -math.inf
    return n * math.log(chi2 / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def _r2(logt: np.ndarray, resid: np.ndarray, w: np.ndarray) -> float | None:
    mean = np.sum(w * logt) / np.sum(w)
    tot = float(np.sum(w * (logt - mean) ** 2))
    return 1.0 - float(np.sum(w * resid**2)) / tot if tot > 0 else None


# ------------------------------------------------------------------------------------------------
# Roofline with overhead


def roofline_time(t0: float, peak_flops: float | None, bandwidth_bps: float | None, flops, bytes_):
    """t0 + max(F/P, B/W) (model.cost); a ceiling of None (or inf) contributes nothing."""
    return roofline_seconds(np.asarray(flops, float), np.asarray(bytes_, float), peak_flops, bandwidth_bps, t0)


def _model(theta: np.ndarray, f: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The roofline time in the fit's parameters theta = (t0, 1/P, 1/W): model.cost's formula, written with the
    inverse rates so that an unconstrained ceiling is 0, not inf (the optimizer's space)."""
    return theta[0] + np.maximum(theta[1] * f, theta[2] * b)


def _objective(theta, f, b, logt, w) -> float:
    m = _model(theta, f, b)
    if np.any(m <= 0):
        return math.inf
    return float(np.sum(w * (np.log(m) - logt) ** 2))


def _jacobian(theta, f, b) -> np.ndarray:
    """d log m / d (t0, c, d) with c = 1/P, d = 1/W; the max picks the active term per point."""
    m = _model(theta, f, b)
    compute = theta[1] * f >= theta[2] * b
    return np.column_stack([1.0 / m, np.where(compute, f, 0.0) / m, np.where(compute, 0.0, b) / m])


def _nonneg_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """Least squares with every coefficient >= 0, by trying each subset of free columns (3 at most)."""
    p = x.shape[1]
    scale = np.max(np.abs(x), axis=0)
    best, best_rss = None, math.inf
    for r in range(1, p + 1):
        for cols in combinations(range(p), r):
            cols = list(cols)
            if np.any(scale[cols] == 0):
                continue
            xs = x[:, cols] / scale[cols]
            coef, *_ = np.linalg.lstsq(xs, y, rcond=None)
            if np.any(coef < 0):
                continue
            theta = np.zeros(p)
            theta[cols] = coef / scale[cols]
            rss = float(np.sum((x @ theta - y) ** 2))
            if rss < best_rss:
                best, best_rss = theta, rss
    return best


def _initial_guesses(f, b, t, w) -> list[np.ndarray]:
    """Linear fits (relative residuals) for every split of the points by intensity."""
    order = np.argsort(f / b)
    sw = np.sqrt(w) / t  # relative residual (m - t)/t, weighted
    guesses = []
    for s in range(len(t) + 1):
        bw = np.zeros(len(t), bool)
        bw[order[:s]] = True
        x = np.column_stack([np.ones_like(t), np.where(bw, 0.0, f), np.where(bw, b, 0.0)])
        theta = _nonneg_lstsq(x * sw[:, None], t * sw)
        if theta is not None:
            guesses.append(theta)
    return guesses


def _refine(theta: np.ndarray, f, b, logt, w, iterations: int = 100) -> np.ndarray:
    """Levenberg-Marquardt on log residuals, in relative parameter steps, keeping parameters >= 0."""
    theta = theta.copy()
    cost = _objective(theta, f, b, logt, w)
    lam = 1e-3
    sw = np.sqrt(w)
    for _ in range(iterations):
        free = theta > 0
        if not free.any():
            break
        j = _jacobian(theta, f, b)[:, free] * theta[free]  # d log m / d log theta
        if not np.any(j):
            break
        r = (np.log(_model(theta, f, b)) - logt) * sw
        jw = j * sw[:, None]
        improved = False
        for _ in range(12):
            a = np.vstack([jw, math.sqrt(lam) * np.diag(np.sqrt(np.sum(jw**2, axis=0)) + 1e-30)])
            rhs = np.concatenate([-r, np.zeros(jw.shape[1])])
            step, *_ = np.linalg.lstsq(a, rhs, rcond=None)
            step = np.clip(step, -2.0, 2.0)  # at most e^2 per iteration in relative terms
            trial = theta.copy()
            trial[free] = theta[free] * np.exp(step)
            tc = _objective(trial, f, b, logt, w)
            if tc < cost:
                improved = cost - tc > 1e-12 * max(cost, 1e-300)
                theta, cost = trial, tc
                lam = max(lam / 3, 1e-9)
                break
            lam *= 4
        if not improved:
            break
    return theta


def _inverse_normal(j: np.ndarray) -> np.ndarray:
    """(J^T J)^-1 with the columns scaled first: t0, 1/P and 1/W differ by ten orders of magnitude, and
    forming J^T J unscaled would square that into a matrix no inverse survives."""
    norm = np.sqrt(np.sum(j**2, axis=0))
    norm[norm == 0] = 1.0
    js = j / norm
    try:
        inv = np.linalg.inv(js.T @ js)
    except np.linalg.LinAlgError:
        inv = np.linalg.pinv(js.T @ js)
    return inv / np.outer(norm, norm)


def fit_roofline(flops, bytes_, seconds, sigma=None) -> dict:
    """Fit t = t0 + max(F/P, B/W); returns values, uncertainties, regimes, residuals and AICc.

    ``sigma``: relative uncertainty of each time (default SIGMA_FLOOR for all).
    """
    f = np.asarray(flops, float)
    b = np.asarray(bytes_, float)
    t = np.asarray(seconds, float)
    n = len(t)
    if n < 2 or np.any(t <= 0) or np.any(f <= 0) or np.any(b <= 0):
        return {"model": "roofline", "ok": False, "reason": "needs at least 2 positive points", "n_points": n}
    w = _weights(t, sigma)
    logt = np.log(t)
    guesses = _initial_guesses(f, b, t, w)
    # the full model, and the two one-ceiling models (1/W = 0: compute only, 1/P = 0: bandwidth only)
    families = {"full": [g for g in guesses if g[1] > 0 and g[2] > 0],
                "compute": [g for g in guesses if g[2] == 0 and g[1] > 0],
                "bandwidth": [g for g in guesses if g[1] == 0 and g[2] > 0]}
    found = {}
    for name, cands in families.items():
        cands.sort(key=lambda th: _objective(th, f, b, logt, w))
        for g in cands[:4]:
            th = _refine(g, f, b, logt, w)
            if name != "full" or (th[1] > 0 and th[2] > 0):
                cost = _objective(th, f, b, logt, w)
                if name not in found or cost < found[name][1]:
                    found[name] = (th, cost)
    if not found:  # pragma: no cover - a positive t always admits a one-ceiling fit
        return {"model": "roofline", "ok": False, "reason": "no fit", "n_points": n}
    reduced = min((v for k_, v in found.items() if k_ != "full"), key=lambda v: v[1], default=None)
    full = found.get("full")
    # a second ceiling has to earn its parameter: the full model only when its AICc is clearly lower
    if full and (reduced is None or (_aicc(full[1], n, 3) or math.inf) < (_aicc(reduced[1], n, 2) or math.inf) - AICC_TIE):
        best, best_cost = full
    else:
        best, best_cost = reduced
    t0, c, d = best
    intensity = f / b
    span = float(intensity.max() / intensity.min())
    m = _model(best, f, b)
    resid = logt - np.log(m)  # measured over model, in log
    compute_t, bandwidth_t = c * f, d * b
    compute = (compute_t >= bandwidth_t) & (c > 0)
    bandwidth = ~compute & (d > 0)
    overhead = t0 >= np.maximum(compute_t, bandwidth_t)
    # parameters a point constrains: t0 always; c only through compute-bound points, d bandwidth-bound
    identified = [True, c > 0 and compute.any(), d > 0 and bandwidth.any()]
    free = [i for i in range(3) if identified[i]]
    k = len(free)
    dof = n - k
    chi2 = best_cost
    s2 = chi2 / dof if dof > 0 else math.nan
    j = _jacobian(best, f, b)[:, free] * np.sqrt(w)[:, None]
    cov = np.full((3, 3), math.nan)
    inv = _inverse_normal(j) if k else np.zeros((0, 0))
    for a_, ia in enumerate(free):
        for b_, ib in enumerate(free):
            cov[ia, ib] = inv[a_, b_] * s2
    sd = np.sqrt(np.abs(np.diag(cov)))
    attained_flops = float(np.max(f / t))
    attained_bps = float(np.max(b / t))

    def ceiling(i: int, value_inv: float, attained: float, regime: str, unit: float) -> dict:
        if identified[i]:
            v = 1.0 / value_inv
            return {"value": float(v / unit), "sigma": _finite(sd[i] / value_inv**2 / unit), "status": "fitted",
                    "points": int((compute if i == 1 else bandwidth).sum())}
        # no point is limited by this ceiling: the data only say it lies above what was attained
        return {"value": None, "sigma": None, "status": "lower bound", "lower_bound": attained / unit, "points": 0,
                "note": f"no {regime}-bound point: the ceiling is above what was attained"}

    ambiguous = span < INTENSITY_SPAN and not (c > 0 and d > 0)
    peak = ceiling(1, c, attained_flops, "compute", 1e9)
    bandwidth_ = ceiling(2, d, attained_bps, "bandwidth", 1e9)
    if ambiguous:
        # one rate, two names: F/P = B/W at these (nearly equal) intensities; give both, neither as a finding
        bytes_per_flop = float(np.median(b / f))
        known, other, factor = (peak, bandwidth_, bytes_per_flop) if c > 0 else (bandwidth_, peak, 1 / bytes_per_flop)
        other.update(value=known["value"] * factor, sigma=_finite((known["sigma"] or 0) * factor) or None,
                     points=known["points"])
        other.pop("lower_bound", None)
        other.pop("note", None)
        known["status"] = other["status"] = "ambiguous"
    return {
        "model": "roofline", "ok": True, "n_points": n, "n_params": k, "dof": dof,
        "intensity_range": [float(intensity.min()), float(intensity.max())],
        "ambiguous": bool(ambiguous),
        "note": (f"every point has an intensity of {intensity.min():.3g} to {intensity.max():.3g} FLOP/byte: too "
                 "narrow a range to tell a compute ceiling from a bandwidth one: P and W are one rate, in FLOP/s "
                 "and in bytes/s") if ambiguous else "",
        "t0_seconds": {"value": float(t0), "sigma": _finite(sd[0]), "status": "fitted" if t0 > 1e-6 * float(t.min()) else "at bound 0"},
        "peak_gflops": peak,
        "bandwidth_gbps": bandwidth_,
        "regime": ["overhead" if o else ("compute" if cp else "bandwidth") for o, cp in zip(overhead, compute)],
        "chi2": chi2, "reduced_chi2": _finite(s2), "rms_log": float(np.sqrt(np.mean(resid**2))),
        "r2_log": _finite(_r2(logt, resid, w)), "aicc": _finite(_aicc(chi2, n, k)),
        "residuals_log": resid.tolist(),
        "theta": [float(t0), float(c), float(d)],
        "cov": [[_finite(x) for x in row] for row in cov],
    }


def roofline_predict(fit: dict, flops, bytes_):
    """Model times of a roofline fit at these FLOPs and bytes (an unconstrained ceiling adds nothing)."""
    t0, c, d = fit["theta"]
    return _model(np.array([t0, c, d]), np.asarray(flops, float), np.asarray(bytes_, float))


# ------------------------------------------------------------------------------------------------
# Power law


def fit_power_law(size, seconds, sigma=None) -> dict:
    """Fit t = a * size^p by weighted least squares on logs; a in seconds at size 1."""
    x = np.asarray(size, float)
    t = np.asarray(seconds, float)
    n = len(t)
    if n < 2 or np.any(t <= 0) or np.any(x <= 0) or len(set(x.tolist())) < 2:
        return {"model": "power_law", "ok": False, "reason": "needs at least 2 distinct sizes", "n_points": n}
    w = _weights(t, sigma)
    sw = np.sqrt(w)
    logt = np.log(t)
    design = np.column_stack([np.ones(n), np.log(x)])
    coef, *_ = np.linalg.lstsq(design * sw[:, None], logt * sw, rcond=None)
    resid = logt - design @ coef
    chi2 = float(np.sum(w * resid**2))
    dof = n - 2
    s2 = chi2 / dof if dof > 0 else math.nan
    cov = np.linalg.pinv((design * sw[:, None]).T @ (design * sw[:, None])) * s2
    la, p = coef
    a = math.exp(la)
    return {
        "model": "power_law", "ok": True, "n_points": n, "n_params": 2, "dof": dof,
        "a_seconds": {"value": a, "sigma": _finite(a * math.sqrt(abs(cov[0, 0])))},
        "p": {"value": float(p), "sigma": _finite(math.sqrt(abs(cov[1, 1])))},
        "chi2": chi2, "reduced_chi2": _finite(s2), "rms_log": float(np.sqrt(np.mean(resid**2))),
        "r2_log": _finite(_r2(logt, resid, w)), "aicc": _finite(_aicc(chi2, n, 2)),
        "residuals_log": resid.tolist(),
    }


def power_law_predict(fit: dict, size):
    return fit["a_seconds"]["value"] * np.asarray(size, float) ** fit["p"]["value"]


def compare_models(roofline: dict, power: dict) -> dict:
    """Which model fits better by AICc (same points): 'roofline', 'power_law' or None (tie / no fit)."""
    ra, pa = roofline.get("aicc"), power.get("aicc")
    if not roofline.get("ok") or not power.get("ok") or ra is None or pa is None:
        ok = [m for m in (roofline, power) if m.get("ok")]
        return {"preferred": ok[0]["model"] if len(ok) == 1 else None, "delta_aicc": None,
                "reason": "only one model could be fitted" if len(ok) == 1 else "too few points to compare"}
    delta = pa - ra  # > 0: roofline better
    if abs(delta) < AICC_TIE:
        return {"preferred": None, "delta_aicc": delta, "reason": f"AICc differ by {abs(delta):.1f} < {AICC_TIE:g}: a tie"}
    better = "roofline" if delta > 0 else "power_law"
    return {"preferred": better, "delta_aicc": delta, "reason": f"AICc lower by {abs(delta):.1f}"}


def fit_series(size, flops, bytes_, seconds, sigma=None) -> dict:
    """Both models, the better one, and outliers (flagged under the better model, left out of the final fits)."""
    size = np.asarray(size, float)
    flops = np.asarray(flops, float)
    bytes_ = np.asarray(bytes_, float)
    t = np.asarray(seconds, float)
    sig = np.full(t.shape, SIGMA_FLOOR) if sigma is None else np.asarray(sigma, float)
    keep = np.ones(len(t), bool)
    outliers: list[int] = []
    for _ in range(2):
        rf = fit_roofline(flops[keep], bytes_[keep], t[keep], sig[keep])
        pf = fit_power_law(size[keep], t[keep], sig[keep])
        choice = compare_models(rf, pf)
        ref = {"roofline": rf, "power_law": pf}.get(choice["preferred"] or "roofline")
        if not ref.get("ok") or outliers:
            break
        resid = np.asarray(ref["residuals_log"])
        found = _outliers(resid, min_kept=ref["n_params"] + 3)
        if not found:
            break
        idx = np.flatnonzero(keep)
        outliers = sorted(int(idx[i]) for i in found)
        keep[outliers] = False
    return {"roofline": rf, "power_law": pf, "comparison": choice, "outliers": outliers,
            "used": np.flatnonzero(keep).tolist()}


def _outliers(resid: np.ndarray, min_kept: int) -> list[int]:
    """Indices of residuals far out: robust z > OUTLIER_Z and > OUTLIER_MIN_REL relative, keeping min_kept."""
    n = len(resid)
    if n < min_kept + 1:
        return []
    med = float(np.median(resid))
    mad = 1.4826 * float(np.median(np.abs(resid - med)))
    limit = max(OUTLIER_Z * mad, math.log1p(OUTLIER_MIN_REL))
    far = [i for i in np.argsort(-np.abs(resid - med)) if abs(resid[i] - med) > limit]
    # more than a few "outliers" means the model, not the points, is off: flag the worst few only
    return sorted(int(i) for i in far[: max(0, min(n - min_kept, max(1, n // MAX_OUTLIER_SHARE)))])


# ------------------------------------------------------------------------------------------------
# Crossovers


def _states(d: np.ndarray, sd: np.ndarray, min_run: int = 1) -> np.ndarray:
    """+1 where d is significantly positive, -1 negative, 0 a tie within NOISE_Z sigma.

    With ``min_run`` > 1, a stretch of fewer than ``min_run`` significant sizes of one sign (ties in
    between skipped) between stretches of the other sign, or at an end, is demoted to ties, the
    shortest first, until every stretch left is at least that long.
    """
    s = np.sign(d).astype(int)
    s[np.abs(d) <= NOISE_Z * sd] = 0
    if min_run <= 1:
        return s
    while True:
        sig = np.flatnonzero(s != 0)
        runs: list[list[int]] = []
        for i in sig:
            if runs and s[runs[-1][-1]] == s[i]:
                runs[-1].append(int(i))
            else:
                runs.append([int(i)])
        short = [r for r in runs if len(r) < min_run]
        if not short or len(runs) == 1:
            if len(runs) == 1 and len(runs[0]) < min_run:
                s[runs[0]] = 0
            return s
        s[min(short, key=len)] = 0


def _curvature_error(u: np.ndarray, d: np.ndarray, q: int, u_lin: float) -> float:
    """How far a quadratic through a neighbour puts the root of d between u[q] and u[q+1] (interpolation error)."""
    worst = 0.0
    for idx in ((q - 1, q, q + 1), (q, q + 1, q + 2)):
        if idx[0] < 0 or idx[2] >= len(u):
            continue
        try:
            coef = np.polyfit(u[list(idx)], d[list(idx)], 2)
        except (np.linalg.LinAlgError, ValueError):  # pragma: no cover - distinct sizes always fit
            continue
        roots = [r.real for r in np.roots(coef) if abs(r.imag) < 1e-12 and u[q] <= r.real <= u[q + 1]]
        if roots:
            worst = max(worst, min(abs(r - u_lin) for r in roots))
    return worst


def crossovers(x, ya, yb, sa=None, sb=None, min_run: int = MIN_RUN) -> list[dict]:
    """Sizes where the faster of two curves changes (A faster where ya < yb).

    ``x`` ascending, ``ya``/``yb`` positive (NaN or None: not measured, left out), ``sa``/``sb`` their
    relative sigmas (None: exact curves, every difference counts). Each crossover: ``x`` (interpolated in
    log-log), ``sigma``, ``between`` (the bracketing significant sizes), ``faster_above`` ('a' or 'b'),
    ``ties_between`` (tied points inside the bracket). Each side needs ``min_run`` significant sizes.
    """
    x = np.asarray(x, float)
    ya = np.asarray([np.nan if v is None else v for v in ya], float)
    yb = np.asarray([np.nan if v is None else v for v in yb], float)
    ok = np.isfinite(ya) & np.isfinite(yb) & (ya > 0) & (yb > 0)

    def rel(s, like):
        if s is None:
            return np.zeros(like.shape)
        return np.asarray([0.0 if v is None else v for v in s], float)

    sda = rel(sa, ya)
    sdb = rel(sb, yb)
    x, ya, yb, sda, sdb = x[ok], ya[ok], yb[ok], sda[ok], sdb[ok]
    if len(x) < 2:
        return []
    u = np.log(x)
    d = np.log(ya) - np.log(yb)  # < 0: A faster
    sd = np.sqrt(sda**2 + sdb**2)
    st = _states(d, sd, min_run)
    sig = np.flatnonzero(st != 0)
    out = []
    for i, j in zip(sig[:-1], sig[1:]):
        if st[i] == st[j]:
            continue
        # raw sign changes of d inside [i, j]: where the curves cross, tied points included
        roots = []
        for q in range(i, j):
            d0, d1 = d[q], d[q + 1]
            if d0 == 0:
                roots.append((u[q], 0.0))
            elif d0 * d1 < 0:
                frac = d0 / (d0 - d1)
                g0 = (u[q + 1] - u[q]) * (-d1) / (d0 - d1) ** 2  # d u* / d d0
                g1 = (u[q + 1] - u[q]) * d0 / (d0 - d1) ** 2  # d u* / d d1
                u_lin = u[q] + frac * (u[q + 1] - u[q])
                noise = math.hypot(g0 * sd[q], g1 * sd[q + 1])
                roots.append((u_lin, math.hypot(noise, _curvature_error(u, d, q, u_lin))))
        if not roots:  # pragma: no cover - opposite signs always cross in between
            continue
        us = np.array([r[0] for r in roots])
        u_star = float(np.mean(us))
        s_u = math.sqrt(np.mean([r[1] ** 2 for r in roots]))
        xs = math.exp(u_star)
        sigma = xs * s_u
        if j > i + 1:  # ties in between: the crossover is somewhere in that stretch
            sigma = math.hypot(sigma, (x[j] - x[i]) / math.sqrt(12))
        sigma = min(sigma, x[j] - x[i])
        out.append({"x": xs, "sigma": sigma, "between": [float(x[i]), float(x[j])],
                    "faster_above": "a" if st[j] < 0 else "b", "ties_between": int(j - i - 1)})
    return out


def tied_from(x, ya, yb, sa=None, sb=None, min_run: int = MIN_RUN) -> float | None:
    """The smallest size from which every larger common size is a tie (at least ``min_run`` of them)."""
    x = np.asarray(x, float)
    ya = np.asarray([np.nan if v is None else v for v in ya], float)
    yb = np.asarray([np.nan if v is None else v for v in yb], float)
    ok = np.isfinite(ya) & np.isfinite(yb) & (ya > 0) & (yb > 0)
    sda = np.zeros(len(x)) if sa is None else np.asarray([0.0 if v is None else v for v in sa], float)
    sdb = np.zeros(len(x)) if sb is None else np.asarray([0.0 if v is None else v for v in sb], float)
    x, ya, yb, sda, sdb = x[ok], ya[ok], yb[ok], sda[ok], sdb[ok]
    if len(x) < min_run:
        return None
    st = _states(np.log(ya) - np.log(yb), np.sqrt(sda**2 + sdb**2), min_run)
    nonzero = np.flatnonzero(st != 0)
    start = 0 if not len(nonzero) else int(nonzero[-1]) + 1
    return float(x[start]) if len(x) - start >= min_run else None


def faster_at(x, ya, yb, sa=None, sb=None) -> dict:
    """Who is faster at the smallest and largest common size ('a', 'b' or 'tie')."""
    x = np.asarray(x, float)
    ya = np.asarray([np.nan if v is None else v for v in ya], float)
    yb = np.asarray([np.nan if v is None else v for v in yb], float)
    ok = np.flatnonzero(np.isfinite(ya) & np.isfinite(yb))
    if not len(ok):
        return {"first": None, "last": None}
    sda = np.zeros(len(x)) if sa is None else np.asarray([0.0 if v is None else v for v in sa], float)
    sdb = np.zeros(len(x)) if sb is None else np.asarray([0.0 if v is None else v for v in sb], float)

    def who(i):
        dd = math.log(ya[i] / yb[i])
        if abs(dd) <= NOISE_Z * math.hypot(sda[i], sdb[i]):
            return "tie"
        return "a" if dd < 0 else "b"

    return {"first": who(ok[0]), "first_x": float(x[ok[0]]), "last": who(ok[-1]), "last_x": float(x[ok[-1]])}


def reach_sizes(x, gflops, sigma=None, fractions=PEAK_FRACTIONS) -> dict:
    """Peak attained GFLOP/s and, per fraction, the size from which the curve reaches that share of it.

    ``from_x``: the first upward crossing of fraction x peak (interpolated, with sigma), or the smallest
    size when already there; ``drops_below``: sizes where it later falls significantly below again.
    """
    x = np.asarray(x, float)
    g = np.asarray([np.nan if v is None else v for v in gflops], float)
    ok = np.isfinite(g) & (g > 0)
    x, g = x[ok], g[ok]
    s = np.full(len(g), 0.0) if sigma is None else np.asarray(sigma, float)[ok]
    if not len(g):
        return {"peak_gflops": None, "peak_x": None, "levels": []}
    ip = int(np.argmax(g))
    levels = []
    for frac in fractions:
        level = frac * g[ip]
        # times-like curves: a = level, b = measured; "a faster" <=> measured above the level
        cs = crossovers(x, 1.0 / np.full(len(g), level), 1.0 / g, None, s)
        ups = [c for c in cs if c["faster_above"] == "b"]
        downs = [c for c in cs if c["faster_above"] == "a"]
        entry = {"fraction": frac, "level_gflops": float(level), "from_x": None, "sigma": None, "at_start": False,
                 "drops_below": []}
        st0 = _states(np.log(np.array([g[0] / level])), np.array([s[0]]))[0]
        if st0 >= 0:  # at or above the level (within noise) at the smallest size
            entry.update(from_x=float(x[0]), at_start=True)
            first_up = None
        else:
            first_up = ups[0] if ups else None
            if first_up:
                entry.update(from_x=first_up["x"], sigma=first_up["sigma"], between=first_up["between"])
        after = first_up["x"] if first_up else x[0]
        entry["drops_below"] = [c["x"] for c in downs if c["x"] >= after]
        levels.append(entry)
    return {"peak_gflops": float(g[ip]), "peak_x": float(x[ip]), "levels": levels}


# ------------------------------------------------------------------------------------------------
# A whole sweep


def _scatter(fits: dict | None) -> float:
    """Robust relative scatter (1.4826 MAD of the log residuals) of a series around its preferred fit; 0 if none."""
    if not fits:
        return 0.0
    model = fits.get(fits.get("comparison", {}).get("preferred") or "roofline") or {}
    resid = model.get("residuals_log")
    if not model.get("ok") or not resid or len(resid) < 4:
        return 0.0
    r = np.asarray(resid, float)
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def series_points(measurements: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Checked, timed points grouped by (backend, dtype), sorted by size."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for p in measurements:
        timing = p.get("timing")
        if not timing or not (p.get("check") or {}).get("ok") or p.get("size") is None:
            continue
        groups.setdefault((p["backend"], p["dtype"]), []).append(p)
    return {k: sorted(v, key=lambda p: p["size"]) for k, v in groups.items()}


def summarize_sweep(measurements: list[dict]) -> dict:
    """Per backend x dtype: fits, outliers, peak and reach sizes; per pair: crossovers. JSON-ready."""
    series = []
    for (backend, dtype), pts in series_points(measurements).items():
        size = [p["size"] for p in pts]
        t = [p["timing"]["median_seconds"] for p in pts]
        sig = [rel_sigma(p["timing"]) for p in pts]
        gf = [p["flops"] / ti / 1e9 for p, ti in zip(pts, t)]
        entry = {"backend": backend, "dtype": dtype, "label": f"{backend} {dtype}", "sizes": size, "seconds": t,
                 "rel_sigma": sig, "gflops": gf, "flops": [p["flops"] for p in pts],
                 "bytes": [p["bytes"] for p in pts]}
        if len(pts) >= 2:
            fits = fit_series(size, entry["flops"], entry["bytes"], t, sig)
            entry["outlier_sizes"] = [size[i] for i in fits["outliers"]]
            entry["fits"] = fits
        else:
            entry["outlier_sizes"] = []
            entry["fits"] = None
        entry["scatter"] = _scatter(entry["fits"])
        inl = [i for i in range(len(pts)) if size[i] not in entry["outlier_sizes"]]
        entry["reach"] = reach_sizes([size[i] for i in inl], [gf[i] for i in inl], [sig[i] for i in inl])
        series.append(entry)
    pairs = []
    for a, b in combinations(series, 2):
        common = sorted(set(a["sizes"]) & set(b["sizes"]))
        if len(common) < 2:
            continue

        def pick(s, key, common=common):
            return [s[key][s["sizes"].index(x)] for x in common]

        ya, yb = pick(a, "seconds"), pick(b, "seconds")
        # a point's uncertainty is at least its series' scatter around its own curve (drift between sizes)
        sa = [max(v, a["scatter"]) for v in pick(a, "rel_sigma")]
        sb = [max(v, b["scatter"]) for v in pick(b, "rel_sigma")]
        pairs.append({"a": a["label"], "b": b["label"], "sizes": common,
                      "crossovers": crossovers(common, ya, yb, sa, sb), "faster": faster_at(common, ya, yb, sa, sb),
                      "tied_from": tied_from(common, ya, yb, sa, sb)})
    return {"series": series, "pairs": pairs}
