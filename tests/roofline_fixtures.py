"""Synthetic profiles and results dicts for tests/test_roofline.py (no hardware, no timing).

Every figure here is chosen by hand; the expected values in the tests are recomputed from these
inputs with the formulas of the design notes, not read back from rwkvprobe.verdict.roofline.
"""

from __future__ import annotations

from rwkvprobe.model.profile import DTYPE_BYTES, layer_list, parse_profile, profile_json
from rwkvprobe.results import new_results

#: A small RWKV-7: big enough that its att/ffn/head layers are bandwidth-bound at 10 GB/s and
#: t0 = 10 µs, while its low-rank (LoRA) layers are overhead-bound.
RWKV7_SMALL = {
    "name": "RWKV-7 test", "source": "synthetic (tests)", "version": 7, "n_layer": 2, "n_embd": 512,
    "head_size": 64, "vocab_size": 1024, "lora": {"decay": 8, "aaa": 8, "mv": 8, "gate": 16},
}
RWKV4_SMALL = {"name": "RWKV-4 test", "source": "synthetic (tests)", "version": 4, "n_layer": 2, "n_embd": 512,
               "vocab_size": 1024}


def explicit_profile(*layers: tuple[str, int, int, int]) -> dict:
    """A 'layers:' profile from (name, k, n, count) tuples (non-matmul bytes: 0)."""
    return {"name": "explicit test", "source": "synthetic (tests)",
            "layers": [{"name": nm, "k": k, "n": n, "count": c} for nm, k, n, c in layers]}


def layers_of(data: dict):
    return layer_list(parse_profile(data, "<test>"))


def work(m: int, k: int, n: int, dtype: str) -> tuple[float, float]:
    """FLOPs and bytes of one call, as the design notes define them."""
    e = DTYPE_BYTES[dtype]
    return 2.0 * m * k * n, k * n * e + m * k * e + m * n * e


def model_time(m: int, k: int, n: int, dtype: str, peak_gflops: float, bw_gbps: float, t0: float) -> float:
    f, b = work(m, k, n, dtype)
    return t0 + max(f / (peak_gflops * 1e9), b / (bw_gbps * 1e9))


def point(backend: str, dtype: str, m: int, k: int, n: int, seconds: float | None, ok: bool = True,
          **extra) -> dict:
    f, b = work(m, k, n, dtype)
    p = {"backend": backend, "dtype": dtype, "m": m, "k": k, "n": n, "flops": f, "bytes": b,
         "check": {"ok": ok, "rel_err": 0.0 if ok else 1.0, "tolerance": 1e-4,
                   "detail": "" if ok else "relative error 1.00e+00 > 1e-04"},
         "timing": None if seconds is None else {"median_seconds": seconds, "min_seconds": seconds,
                                                  "samples": [seconds, seconds, seconds]},
         "error": None}
    p.update(extra)
    return p


def make_results(layers, *, tokens=(1, 8), bw_gbps: float = 10.0, peak_gflops: float = 100.0,
                 overhead: float = 1e-5, backend: str = "numpy", dtype: str = "fp32", time_of=None,
                 extra_ceilings: list[dict] | None = None) -> dict:
    """A results dict as ``analyze`` writes it, with one point per unique shape and M.

    ``time_of(m, k, n)`` gives the measured median seconds of a point (None: no point at all); by
    default every point is measured exactly at its model time t0 + max(F/P, B/W).
    """
    if time_of is None:
        def time_of(m, k, n):
            return model_time(m, k, n, dtype, peak_gflops, bw_gbps, overhead)
    r = new_results("analyze", {}, {"tokens": list(tokens), "threads": 1, "cold": True})
    r["profile"] = profile_json(layers)
    r["bandwidth"] = {"engine": "synthetic", "array_bytes": 1e9, "trials": 5,
                      "runs": [{"threads": 1, "cluster": None,
                                "kernels": {"read": {"best_gbps": bw_gbps, "avg_gbps": bw_gbps}}}]}
    r["ceilings"] = [{"backend": backend, "dtype": dtype, "peak_gflops": peak_gflops, "gemv_gbps": 0.9 * bw_gbps,
                      "overhead_seconds": overhead}] + (extra_ceilings or [])
    r["measurements"] = []
    for (k, n) in layers.unique_shapes():
        for m in tokens:
            t = time_of(m, k, n)
            if t is not None:
                r["measurements"].append(point(backend, dtype, m, k, n, t))
    r["skipped"] = []
    return r


def series_of(verdict: dict, backend: str = "numpy", dtype: str = "fp32") -> dict:
    (s,) = [s for s in verdict["series"] if s["backend"] == backend and s["dtype"] == dtype]
    return s
