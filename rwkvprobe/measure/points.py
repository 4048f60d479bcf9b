"""Measure workloads on backends: one point (check, then time) and the per-backend ceilings.

Ceilings are what the verdict uses instead of spec sheets: the peak GFLOP/s of large matmuls, the
effective GB/s of a large cold GEMV (M=1), and the fixed per-call overhead of a tiny warm matmul.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from rwkvprobe.backends import Backend, Workload, base_weight, check_runner, prepare_weights, small_pages
from rwkvprobe.backends.onnxgen import WEIGHTS_VERSION
from rwkvprobe.fsutil import cache_dir
from rwkvprobe.measure import contention
from rwkvprobe.measure.timing import REWARM, TimingPolicy, cold_call, eviction, measure, plan_rotation

#: square-ish matmuls for the compute ceiling, smallest first; stop growing once a call is this slow
COMPUTE_SHAPES = ((64, 1024, 1024), (128, 2048, 2048), (256, 2048, 2048), (512, 2048, 4096))
COMPUTE_STOP_SECONDS = 0.05
GEMV_SHAPE = (1, 4096, 8192)  # 128 MiB at fp32, 64 MiB at fp16: far beyond the caches, cold
OVERHEAD_SHAPE = (1, 64, 64)  # 16 kB of fp32 weights (whole quantization blocks): the call costs its fixed overhead


def onnx_cache_dir() -> Path:
    """Where generated ONNX models are kept between runs (reused by content hash)."""

    return cache_dir() / f"onnx-weights-v{WEIGHTS_VERSION}"


def measure_point(backend: Backend, workload: Workload, llc_bytes: int | None, policy: TimingPolicy,
                  cold: bool = True, onnx_dir: Path | None = None, max_copies: int | None = None,
                  checked: dict | None = None) -> dict:
    """Check one workload against float64, then time it; a wrong result is recorded, not timed.

    ``max_copies``: fewer distinct weight buffers (the rest of the cold traffic is the untimed eviction read),
    for points whose copies are costly to prepare (the what-if's quantized sessions). ``checked``: the passed check
    of an earlier timing of the same workload on the same backend (analyze's rechecks: the same kernel on the same
    weights, rebuilt from the same seeds), kept with ``reused`` instead of checking again (a check cost a recheck of
    a quick run's heavy points a fifth of its time; timing's warm-up runs every copy once all the same)."""
    rotation = (plan_rotation(workload.weight_bytes, llc_bytes, cold, max_copies=max_copies) if max_copies
                else plan_rotation(workload.weight_bytes, llc_bytes, cold))
    point = {
        "backend": backend.name, "dtype": workload.dtype, "m": workload.m, "k": workload.k, "n": workload.n,
        "flops": workload.flops, "bytes": workload.bytes_moved, "rotation": rotation.describe(),
        "bytes_per_weight": workload.bytes_per_weight, "format": workload.label,
        "check": None, "timing": None, "error": None,
    }
    if workload.weight_dtype:  # the backend holds the weight at another float type: its bytes count at that one
        point["weight_dtype"] = workload.weight_dtype
    speed = contention.canary()  # the machine's speed before this point's backend threads start
    busy: dict | None = None
    if not backend.reads_base_weight(workload.dtype):
        # the weight cached for the points before (the plan takes these backends last in a shape): an ONNX head's
        # session held 1 GB while loading its 0.5 GB fp32 weight, beside the cached copy, the peak of a run
        base_weight.cache_clear()
    fresh = not base_weight.holds(workload.k, workload.n)
    t0 = time.perf_counter()
    try:
        runner = prepare_weights(backend, workload, rotation.copies, onnx_dir or onnx_cache_dir())
    except MemoryError:
        point["error"] = "out of memory preparing the weights"
        return point
    except Exception as e:  # a backend that cannot run this shape/dtype: recorded, the run goes on
        point["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        return point
    t1 = time.perf_counter()
    try:
        with small_pages():  # the float64 reference's blocks too
            point["check"] = ({**checked, "reused": True} if checked and checked.get("ok")
                              else check_runner(workload, runner))
        t2 = time.perf_counter()
        if point["check"]["ok"]:
            before = contention.sample()
            point["timing"] = measure(runner.run, rotation.copies, policy, between=eviction(rotation.flush_bytes))
            busy = contention.between(before, contention.sample())
            point["contention"] = busy
        cost = {"prepare": t1 - t0, "check": t2 - t1, "timing": time.perf_counter() - t2}
        if fresh and base_weight.holds(workload.k, workload.n):  # this point generated it: of its prepare and check
            cost["base_weight"] = base_weight.seconds(workload.k, workload.n)
        point["overhead_seconds"] = cost
    except Exception as e:
        point["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    finally:
        runner.close()
    if busy is not None:
        # and after they stop (an onnxruntime session's threads spin on after a call: a canary beside them ran
        # 50-180x its best): the faster of the two, so that only a machine slow on both sides counts as slow
        busy["canary_seconds"] = min(speed, contention.canary())
    return point


def point_seconds(point: dict) -> float | None:
    """The time that counts for a point: the median of its samples, when its check passed."""
    timing = point.get("timing")
    if not timing or not (point.get("check") or {}).get("ok"):
        return None
    return timing["median_seconds"]


def measure_ceilings(backend: Backend, dtype: str, llc_bytes: int | None, policy: TimingPolicy,
                     onnx_dir: Path | None = None, progress=None, block_size: int = 32, gemv: bool = True,
                     compute_shapes: tuple = COMPUTE_SHAPES, light: bool = False) -> dict:
    """Peak GFLOP/s, cold GEMV GB/s and per-call overhead of one backend at one dtype.

    ``gemv=False`` leaves the cold GEMV out (``analyze --quick``: the verdict's W is the bandwidth probe's,
    the GEMV only guides which points are too slow to measure). ``compute_shapes``: the peak-compute shapes
    to try (fewer for a decode-only series with a small budget). ``light`` (the what-if series): the
    overhead and the smallest compute shape only, no GEMV."""
    out: dict = {"backend": backend.name, "dtype": dtype, "compute": [], "gemv": None, "overhead": None}
    if light:
        out["light"] = True

    def step(label):
        if progress:
            progress(f"{backend.name} {dtype}: {label}")

    step("per-call overhead")
    out["overhead"] = measure_point(backend, backend.workload(*OVERHEAD_SHAPE, dtype, block_size), llc_bytes, policy, cold=False,
                                    onnx_dir=onnx_dir)
    step("peak compute")
    for shape in compute_shapes[:1] if light else compute_shapes:
        point = measure_point(backend, backend.workload(*shape, dtype, block_size), llc_bytes, policy, cold=False, onnx_dir=onnx_dir)
        out["compute"].append(point)
        t = point_seconds(point)
        if t is None or t > COMPUTE_STOP_SECONDS:
            break
    if light or not gemv:
        out["gemv_skipped"] = "not measured in --quick runs" if not light else "not measured for a what-if series"
        out.update(summarize_ceilings(out))
        return out
    step("GEMV bandwidth")
    out["gemv"] = measure_point(backend, backend.workload(*GEMV_SHAPE, dtype, block_size), llc_bytes, policy, cold=True,
                                onnx_dir=onnx_dir)
    out.update(summarize_ceilings(out))
    return out


def summarize_ceilings(c: dict) -> dict:
    """peak_gflops, gemv_gbps, overhead_seconds (None where the measurement failed)."""
    peaks = [p["flops"] / t / 1e9 for p in c["compute"] if (t := point_seconds(p))]
    gemv_t = point_seconds(c["gemv"]) if c.get("gemv") else None
    over_t = point_seconds(c["overhead"]) if c.get("overhead") else None
    return {
        "peak_gflops": max(peaks) if peaks else None,
        "gemv_gbps": c["gemv"]["bytes"] / gemv_t / 1e9 if gemv_t else None,
        "overhead_seconds": over_t,
    }


class PointRounds:
    """analyze's layer points timed again in rounds, for validate's real-pass worker to run between its own rounds
    (forward_worker): the same backend, shape and dtype, the weights rotated over the copies and read cold with the
    eviction that analyze's point used (its ``rotation``). Each copy is called once untimed first (pages touched);
    a round then times ``calls`` calls of every point, each after the eviction and, with several copies, an untimed
    call on the copy timed last, as timing.measure times a point (REWARM). A point's figure is the median of its
    calls, as point_seconds takes the median of a point's samples.

    Why: a prediction made of points timed before the real pass and a real pass timed a minute later fall in
    different phases of a shared machine (this project's VM streams DRAM at 18-90 GB/s from phase to phase); timed
    between the real pass's rounds, both sides share them, as the layer pass's rounds do (layerpass.Rounds)."""

    def __init__(self, backend: Backend, specs: list[dict]):
        """``specs``: per point, m, k, n, dtype and its rotation's copies and flush_bytes (validate.interleaved_points)."""
        self.items: list[dict] = []
        try:
            for s in specs:
                runner = prepare_weights(backend, backend.workload(s["m"], s["k"], s["n"], s["dtype"]), s["copies"])
                self.items.append({"spec": s, "runner": runner, "evict": eviction(s["flush_bytes"]), "next": 0,
                                   "samples": []})
                for i in range(s["copies"]):  # every copy once: pages touched, lazy initialisation done
                    runner.run(i)
        except BaseException:
            self.close()
            raise

    def round(self, calls: int = 1) -> None:
        """``calls`` timed calls of every point, each cold as analyze timed it."""
        for it in self.items:
            runner, evict, copies = it["runner"], it["evict"], it["spec"]["copies"]
            for _ in range(calls):
                i = it["next"]
                # timing.measure's call: the eviction, then (REWARM) the copy timed last, cold again, called untimed
                it["samples"].append(cold_call(runner.run, i, copies, evict, evict is not None and REWARM and copies > 1))
                it["next"] = (i + 1) % copies

    def result(self) -> list[dict]:
        """Per point: its m, k, n and dtype, the median of its timed calls and their count."""
        out = []
        for it in self.items:
            s, samples = it["spec"], it["samples"]
            if samples:
                out.append({"m": s["m"], "k": s["k"], "n": s["n"], "dtype": s["dtype"],
                            "median_seconds": statistics.median(samples), "calls": len(samples)})
        return out

    def close(self) -> None:
        for it in self.items:
            it["runner"].close()
        self.items = []
