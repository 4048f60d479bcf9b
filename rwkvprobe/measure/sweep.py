"""``rwkvprobe sweep``: the seed article's scaling experiment, on the same engine as ``analyze``.

A grid of matmul shapes over a size axis, square (M = K = N = size, as the article) or RWKV-shaped (a
fixed M of 1 or a prefill chunk, K and/or N following the size, N = 4K like the FFN), measured on every
backend x dtype with the same check-then-time points (``measure.measure_point``), cache policy and
environment capture as ``analyze`` (square grids run warm by default, as the article's repeated calls of one
model; fixed-M grids cold, as decode). The results file is rewritten after every point; ``--resume DIR``
measures only what is missing. Before measuring, each backend is timed once on a small shape to project
every point's cost: the run time is estimated up front, points that would eat more than SKIP_SHARE of the
budget are skipped (and listed), and the run stops cleanly at ``--budget`` keeping what it has.

Fits, crossovers and reach sizes (``fit.summarize_sweep``) and the report (``report.sweep.render_sweep``)
are pure functions of the results file.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from rwkvprobe.backends import ELEMENT_BYTES, Backend, Workload, onnxgen, prepare_weights
from rwkvprobe.backends.onnxgen import ModelSpec
from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import ensure_writable_dir
from rwkvprobe.measure import cachesize, system
from rwkvprobe.measure import contention as _c
from rwkvprobe.measure.analyze import plan_series
from rwkvprobe.measure.points import measure_point, onnx_cache_dir
from rwkvprobe.measure.run import Run
from rwkvprobe.measure.timing import TimingPolicy, plan_rotation, set_affinity
from rwkvprobe.npu.board import instantiate
from rwkvprobe.progress import Progress
from rwkvprobe.results import new_results

DEFAULT_SIZES = "128:2048:128"
DEFAULT_BUDGET_SECONDS = 150.0
DEFAULT_DTYPES = ["fp32"]
#: at most this many sizes in one sweep
MAX_SIZES = 1000
#: largest size or fixed dimension accepted (the memory check refuses far smaller ones in practice)
MAX_DIM = 1 << 20
MAX_M = 65536
#: a point projected to cost more than this share of the whole budget is skipped (and listed)
SKIP_SHARE = 0.10
#: per-point timing budget bounds (seconds, warm-up included)
MIN_POINT_SECONDS = 0.08
MAX_POINT_SECONDS = 0.5
#: warn when other processes (or the hypervisor) took more than this share of the CPUs during the run
CONTENTION_WARN = 0.10
#: warm-up per point (at most half its budget)
WARMUP_SECONDS = 0.2
#: calibration: a backend's second calibration shape is the largest projected to take at most this long
CALIBRATION_CALL_SECONDS = 0.02
#: rough costs for the estimate (bytes/s): weight copies made, ONNX models written, eviction reads
COPY_BPS = 2e9
ONNX_WRITE_BPS = 0.3e9
EVICT_BPS = 8e9


# ------------------------------------------------------------------------------------------------
# The grid


def parse_sizes(text: str) -> list[int]:
    """'128:2048:128' (START:STOP:STEP, STOP included when on the grid) or '128,256,512' -> sorted sizes."""
    raw = text.strip()
    example = "e.g. 128:2048:128 or 128,256,512"
    if ":" in raw:
        parts = [p.strip() for p in raw.split(":")]
        if len(parts) != 3:
            raise InputError(f"--sizes {text!r}: expected START:STOP:STEP, {example}")
        if not all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
            raise InputError(f"--sizes {text!r}: START, STOP and STEP must be integers, {example}")
        start, stop, step = (int(p) for p in parts)
        if step <= 0:
            raise InputError(f"--sizes {text!r}: STEP must be a positive integer, not {step}")
        if start <= 0 or stop <= 0:
            raise InputError(f"--sizes {text!r}: sizes must be positive integers")
        if start > stop:
            raise InputError(f"--sizes {text!r}: START {start} is above STOP {stop}; expected START <= STOP, {example}")
        count = (stop - start) // step + 1
        if count > MAX_SIZES:
            raise InputError(f"--sizes {text!r}: {count} sizes, at most {MAX_SIZES}: use a larger STEP")
        sizes = list(range(start, stop + 1, step))
    else:
        sizes = []
        for part in raw.split(","):
            part = part.strip()
            if not re.fullmatch(r"\d+", part) or int(part) <= 0:
                raise InputError(f"--sizes {text!r}: expected positive integers, {example}")
            sizes.append(int(part))
        sizes = sorted(set(sizes))
        if len(sizes) > MAX_SIZES:
            raise InputError(f"--sizes: {len(sizes)} sizes, at most {MAX_SIZES}")
    if sizes[-1] > MAX_DIM:
        raise InputError(f"--sizes {text!r}: size {sizes[-1]} is above the largest supported, {MAX_DIM}")
    return sizes


def _parse_dim(text: str, option: str, other: str) -> str:
    """'size', a positive integer, or a multiple of the other dimension ('4k', 'n'); normalized."""
    t = text.strip().lower().replace("*", "").replace(" ", "")
    if t == "size":
        return t
    if re.fullmatch(r"\d+", t):
        v = int(t)
        if not 0 < v <= MAX_DIM:
            raise InputError(f"{option} {text!r}: expected a dimension from 1 to {MAX_DIM}")
        return str(v)
    mo = re.fullmatch(rf"(\d*){other}", t)
    if mo:
        mult = int(mo.group(1) or 1)
        if mult <= 0:
            raise InputError(f"{option} {text!r}: the multiple of {other.upper()} must be positive")
        return f"{mult}{other}"
    raise InputError(f"{option} {text!r}: expected 'size', a positive integer, or a multiple of {other.upper()} "
                     f"such as '4{other}'")


@dataclass(frozen=True)
class Grid:
    """Which (M, K, N) each size stands for."""

    sizes: tuple[int, ...]
    m: str = "square"  # 'square' or a number
    k: str = "size"  # 'size', a number, or '<c>n'
    n: str = "size"  # 'size', a number, or '<c>k'

    @property
    def square(self) -> bool:
        return self.m == "square"

    def shape(self, size: int) -> tuple[int, int, int]:
        if self.square:
            return size, size, size

        def plain(spec: str) -> int | None:
            if spec == "size":
                return size
            return int(spec) if spec.isdigit() else None

        k, n = plain(self.k), plain(self.n)
        if k is None:
            k = int(self.k[:-1]) * n
        if n is None:
            n = int(self.n[:-1]) * k
        return int(self.m), k, n

    def describe(self) -> str:
        """'M = K = N = n (square)' or 'M = 1, K = n, N = 4K'."""
        if self.square:
            return "M = K = N = n (square)"

        def show(spec: str, other: str) -> str:
            if spec == "size":
                return "n"
            if spec.isdigit():
                return spec
            mult = spec[:-1]
            return f"{mult if mult != '1' else ''}{other}"

        return f"M = {self.m}, K = {show(self.k, 'N')}, N = {show(self.n, 'K')}"

    def to_json(self) -> dict:
        return {"sizes": list(self.sizes), "m": self.m, "k": self.k, "n": self.n, "describe": self.describe()}


def make_grid(sizes: list[int], m: str | None = None, k: str | None = None, n: str | None = None) -> Grid:
    """Validate --m/--k/--n against each other; InputError (one line) when they make no sweep."""
    m_text = (m or "square").strip().lower()
    if m_text in ("square", "sq"):
        for opt, v in (("--k", k), ("--n", n)):
            if v is not None and v.strip().lower() != "size":
                raise InputError(f"{opt} {v!r}: with --m square, M = K = N = size; give --m a number "
                                 "(1 = decode, 64 = a prefill chunk) to fix M and vary K and N")
        return Grid(tuple(sizes), "square", "size", "size")
    if not re.fullmatch(r"\d+", m_text) or not 0 < int(m_text) <= MAX_M:
        raise InputError(f"--m {m!r}: expected 'square' or a number of tokens from 1 to {MAX_M} (1 = decode)")
    kk = _parse_dim(k or "size", "--k", "n")
    nn = _parse_dim(n or "size", "--n", "k")
    if kk.endswith("n") and nn.endswith("k"):
        raise InputError(f"--k {k!r} and --n {n!r}: each is defined by the other; let one of them be 'size'")
    depends = kk == "size" or nn == "size"
    if not depends:
        raise InputError(f"--k {k!r} --n {n!r}: neither K nor N follows the size; make one of them 'size'")
    return Grid(tuple(sizes), str(int(m_text)), kk, nn)


# ------------------------------------------------------------------------------------------------
# Settings, memory check, plan


@dataclass
class SweepSettings:
    grid: Grid
    backends: list[str] | None  # None: every usable backend
    dtypes: list[str] | None  # None: DEFAULT_DTYPES
    threads: int
    cpus: list[int] | None
    cold: bool = True
    budget_seconds: float = DEFAULT_BUDGET_SECONDS
    sizes_text: str = DEFAULT_SIZES
    onnx_dir: Path = field(default_factory=onnx_cache_dir)
    rknn_dir: Path | None = None  # .rknn models of the grid's shapes for rknnlite ('rwkvprobe convert')
    npu_cores: str = "auto"  # core masks, comma-separated: one rknnlite series each (cores.parse_core_masks)

    def __post_init__(self):
        if self.dtypes is None:
            self.dtypes = list(DEFAULT_DTYPES)

    def to_json(self) -> dict:
        return {"grid": self.grid.to_json(), "sizes_text": self.sizes_text, "backends": self.backends,
                "dtypes": self.dtypes, "threads": self.threads, "cpus": self.cpus, "cold": self.cold,
                "budget_seconds": self.budget_seconds, "rknn_dir": str(self.rknn_dir) if self.rknn_dir else None,
                "npu_cores": self.npu_cores}


def default_out_dir(grid: Grid) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    kind = "square" if grid.square else f"m{grid.m}"
    return Path("rwkvprobe-out") / f"sweep-{kind}-{stamp}"


def point_memory_bytes(w: Workload, copies: int, backend: str) -> int:
    """Peak bytes one point holds: weight copies, the fp32 base weight, activations, the float64 check.

    onnxruntime also builds its model (fp32 weight, cast copy, serialized bytes) and holds one weight per
    session; torch makes an fp32 temporary per copy.
    """
    e = w.activation_bytes
    kn = w.k * w.n
    need = kn * 4 + copies * w.weight_bytes  # base weight (cached) + the copies (quantized: their real bytes)
    if w.quantized:  # the check reads the weight back dequantized (fp32, and its transpose for ggml)
        need += 2 * kn * 4
    need += w.m * w.k * e + copies * w.m * w.n * e  # A and one output per copy
    need += w.m * w.k * 8 + 5 * w.m * w.n * 8 + w.k * min(w.n, 4096) * 8  # float64 reference and comparison
    if backend == "torch" or backend == "torch-cuda":
        need += kn * 4
    if backend == "onnxruntime":
        need += kn * 4 + 2 * kn * ELEMENT_BYTES.get(w.dtype, 4)  # building the model
    return int(need)


def check_memory(grid: Grid, pairs: list[tuple[str, str]], llc: int | None, cold: bool,
                 available: int | None = None) -> None:
    """Refuse (one line) a sweep whose largest point would not fit in the memory available now."""
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    size = max(grid.sizes)  # every dimension grows with the size: the largest decides
    m, k, n = grid.shape(size)
    for b, d in pairs:
        w = Workload(m, k, n, d)
        copies = plan_rotation(w.weight_bytes, llc, cold).copies
        need = point_memory_bytes(w, copies, b)
        if need > 0.9 * available:
            raise InputError(
                f"--sizes: size {size} ({m}x{k}x{n} {d} on {b}, {copies} weight cop{'y' if copies == 1 else 'ies'} "
                f"and the float64 check) needs about {need / 1e9:.1f} GB of memory, {available / 1e9:.1f} GB is "
                "available: use smaller sizes")


def plan_pairs(settings: SweepSettings) -> tuple[list[tuple[str, str]], list[dict]]:
    """(backend, dtype) pairs and the skipped ones, by analyze's rules (unknown/missing backends refused)."""

    return plan_series(settings)


def plan_points(grid: Grid, pairs: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    """(size, backend, dtype), size-outermost so one base weight serves every backend at a size."""
    return [(s, b, d) for s in grid.sizes for b, d in pairs]


# ------------------------------------------------------------------------------------------------
# Calibration and the estimate


def _time_call(backend: Backend, w: Workload, onnx_dir: Path, seconds: float = 0.3, calls: int = 30) -> float:
    """Best of a few warm calls of one shape (no check: a rough speed for the projections only).

    The best, not the median: on a shared machine a call can wait a scheduler tick for a busy core.
    """
    runner = prepare_weights(backend, w, 1, onnx_dir)
    try:
        runner.run(0)
        best = math.inf
        start = time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            runner.run(0)
            best = min(best, time.perf_counter() - t0)
            if time.perf_counter() - start > seconds:
                break
        return best
    finally:
        runner.close()


def calibrate(backend: Backend, dtype: str, grid: Grid, onnx_dir: Path) -> dict:
    """One or two timed shapes of the grid per backend x dtype, to project every point's call time."""
    sizes = sorted(grid.sizes)
    w1 = Workload(*grid.shape(sizes[0]), dtype)
    pts = []
    try:
        t1 = _time_call(backend, w1, onnx_dir)
        pts.append({"size": sizes[0], "flops": w1.flops, "seconds": t1})
        if t1 < CALIBRATION_CALL_SECONDS / 2:
            fits = [s for s in sizes[1:] if t1 * Workload(*grid.shape(s), dtype).flops / w1.flops <= CALIBRATION_CALL_SECONDS]
            if fits:
                w2 = Workload(*grid.shape(fits[-1]), dtype)
                pts.append({"size": fits[-1], "flops": w2.flops, "seconds": _time_call(backend, w2, onnx_dir)})
    except Exception as e:  # the point itself will record the failure; project as unknown here
        return {"backend": backend.name, "dtype": dtype, "points": pts,
                "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]}
    return {"backend": backend.name, "dtype": dtype, "points": pts}


def projected_call(points: list[dict] | None, flops: float) -> float | None:
    """Call time projected from known (flops, seconds) points: interpolated linearly in FLOPs between the
    nearest two, the largest point's rate beyond it, the smallest point's time below it."""
    pts = sorted(points or [], key=lambda p: p["flops"])
    if not pts:
        return None
    if flops <= pts[0]["flops"]:
        return pts[0]["seconds"]
    for lo, hi in zip(pts[:-1], pts[1:]):
        if flops <= hi["flops"]:
            if hi["flops"] == lo["flops"]:
                return hi["seconds"]
            return lo["seconds"] + (flops - lo["flops"]) * (hi["seconds"] - lo["seconds"]) / (hi["flops"] - lo["flops"])
    return pts[-1]["seconds"] * flops / pts[-1]["flops"]


def reference_rate(calls: int = 8) -> float:
    """float64 FLOP/s of numpy here (the check's reference): the best of a few 512x512 matmuls."""
    import numpy as np

    a = np.ones((512, 512))
    a @ a
    best = math.inf
    for _ in range(calls):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * 512**3 / best


def point_cost(w: Workload, backend: str, t_call: float, per_point: float, llc: int | None, cold: bool,
               ref_flops_per_s: float, onnx_cached: bool = True) -> float:
    """Projected seconds for one point: prepare, the check (every copy once + the reference), the timing."""
    rot = plan_rotation(w.weight_bytes, llc, cold)
    prepare = rot.copies * w.weight_bytes / COPY_BPS
    if backend == "onnxruntime" and not onnx_cached:
        prepare += w.weight_bytes / ONNX_WRITE_BPS
    check = rot.copies * t_call + w.flops / ref_flops_per_s
    call = t_call + rot.flush_bytes / EVICT_BPS
    warm = min(rot.copies * call, max(call, per_point / 2))
    timing = max(per_point, warm + 3 * call)
    return prepare + check + timing


# ------------------------------------------------------------------------------------------------
# Other processes competing for the CPUs


def cpu_times() -> dict | None:
    """Busy and steal CPU seconds of the whole machine and of this process, now (contention.sample)."""
    try:
        now = _c.sample()
    except Exception:  # pragma: no cover - psutil cannot read the CPU times here
        return None
    return {"sample": now, "wall": now.wall,
            "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def contention(before: dict | None, after: dict | None) -> dict | None:
    """Share of the CPUs other processes (and the hypervisor, as steal) took while the sweep ran."""

    if not before or not after or after["wall"] <= before["wall"]:
        return None
    x = _c.between(before["sample"], after["sample"])
    return {"others_share": min(1.0, x["other_share"]), "steal_share": x["steal_share"],
            "loadavg_before": before.get("loadavg"), "cpus": x["cpus"]}


def contention_warnings(c: dict | None) -> list[str]:
    if not c:
        return []
    out = []
    if c["others_share"] > CONTENTION_WARN:
        out.append(f"Other processes used about {c['others_share']:.0%} of the {c['cpus']} CPUs while the sweep ran: "
                   "its times are inflated and noisy where a backend waited for a busy core (see each point's "
                   "spread). Fix: rerun on a quiet machine, or with --threads below the number of idle CPUs.")
    if c["steal_share"] > CONTENTION_WARN:
        out.append(f"The hypervisor took {c['steal_share']:.0%} of the CPU time (steal) while the sweep ran: "
                   "another VM on the host competed for the cores.")
    return out


# ------------------------------------------------------------------------------------------------
# The run


class Sweep(Run):
    """One sweep run; ``run()`` measures what ``results`` still lacks, saving after each point."""

    KIND = "sweep"
    settings: SweepSettings

    @classmethod
    def start(cls, settings: SweepSettings, out_dir: Path | None) -> "Sweep":
        out, lock = cls.new_folder(out_dir or default_out_dir(settings.grid))
        return cls(settings, out, lock=lock)

    @classmethod
    def resume(cls, settings: SweepSettings, out_dir: Path, results: dict | None = None) -> "Sweep":
        out, lock, results = cls.reopen(out_dir, lambda r, folder: check_resume_settings(r, settings, folder))
        return cls(settings, out, results, lock=lock)

    def run(self, progress: Progress, estimate_only: bool = False) -> dict:
        """Calibrate, estimate, then measure every missing point (nothing with ``estimate_only``)."""
        s = self.settings
        t_start = time.perf_counter()
        pinned = set_affinity(s.cpus)
        llc = cachesize.usable_llc_bytes()
        pairs, skipped = plan_pairs(s)
        # one series per NPU core mask (rknnlite[core0], ...): each its own backend with its mask set
        backends = {name: instantiate(name, s) for name in {b for b, _ in pairs}}
        previous = (self.results or {}).get("measurements", [])
        # points skipped earlier as too slow are planned again: this run's budget may allow them
        done = {(p["size"], p["backend"], p["dtype"]) for p in previous if not p.get("skipped")}
        todo = [p for p in plan_points(s.grid, pairs) if p not in done]
        self._check_onnx_disk(todo)
        if not estimate_only:
            self._setup(pinned, skipped, backends)
        cal, ref_rate, plan, run_log = self._calibrate(pairs, backends, todo, llc, t_start, progress)
        if estimate_only:
            return {"plan": plan, "run": run_log, "points": todo}
        r = self.results
        assert r is not None
        run_log["cache"] = cachesize.decide()  # the cache size this run's cold points were sized by
        r["runs"].append(run_log)
        self.save()
        cpu_before = cpu_times()
        left_out = self._measure_points(todo, backends, cal, plan, ref_rate, llc, t_start, progress)
        progress.close()
        run_log["elapsed_seconds"] = time.perf_counter() - t_start
        run_log["left_out_for_budget"] = len(left_out)
        if left_out:
            r["stopped"] = {"reason": "budget", "budget_seconds": s.budget_seconds, "not_measured": left_out}
        else:
            r.pop("stopped", None)
        r["after"] = system.snapshot_dynamic()
        run_log["contention"] = contention(cpu_before, cpu_times())
        r["warnings"] = system.environment_warnings(r["environment"], r.get("before"), r["after"])
        for run in r["runs"]:
            r["warnings"] += [w for w in contention_warnings(run.get("contention")) if w not in r["warnings"]]
        r["elapsed_seconds"] = r.get("elapsed_seconds", 0.0) + run_log["elapsed_seconds"]
        self.save(final=True)
        return r

    def _setup(self, pinned, skipped: list[dict], backends: dict) -> None:
        """A new results dict (or the resumed one) with this run's settings, skips and backends."""
        s = self.settings
        if self.results is None:
            self.results = new_results("sweep", system.capture_environment(), s.to_json())
            self.results["settings"]["pinned_cpus"] = pinned
            self.results["before"] = system.snapshot_dynamic()
            self.results.update({"measurements": [], "skipped": [], "runs": []})
        r = self.results
        r["settings"].update(budget_seconds=s.budget_seconds, backends=s.backends, dtypes=s.dtypes,
                             npu_cores=s.npu_cores, rknn_dir=str(s.rknn_dir) if s.rknn_dir else None)
        known = {(x["backend"], x["dtype"]) for x in r["skipped"]}
        r["skipped"] += [x for x in skipped if (x["backend"], x["dtype"]) not in known]
        r.setdefault("backends", {}).update({name: b.describe() for name, b in backends.items()})
        r["measurements"] = [p for p in r["measurements"] if not p.get("skipped")]
        self.save()

    def _calibrate(self, pairs, backends: dict, todo, llc, t_start: float, progress: Progress):
        """Each pair timed on one or two sizes of the grid, the reference rate, the plan and the run's log."""
        s = self.settings
        cal_start = cpu_times()
        progress.stage(f"calibrating {len(pairs)} backend x dtype pair{'s' if len(pairs) != 1 else ''}")
        cal = {}
        for b, d in pairs:
            cal[(b, d)] = calibrate(backends[b], d, s.grid, s.onnx_dir)
            progress.note(f"{b} {d}: " + ", ".join(f"n={p['size']} {p['seconds'] * 1e3:.3g} ms"
                                                   for p in cal[(b, d)]["points"]))
        ref_rate = reference_rate()
        plan = self._plan(todo, cal, ref_rate, llc, time.perf_counter() - t_start)
        run_log = {"started": new_results("sweep")["created"], "budget_seconds": s.budget_seconds,
                   "calibration": list(cal.values()), "reference_gflops": ref_rate / 1e9,
                   "per_point_seconds": plan["per_point"], "estimate_seconds": plan["estimate"],
                   "points_planned": len(todo), "skipped_for_cost": len(plan["skip"])}
        progress.stage(estimate_line(plan, s.budget_seconds, len(todo)))
        busy = contention(cal_start, cpu_times())
        if busy and busy["others_share"] > CONTENTION_WARN:
            progress.stage(f"warning: other processes are using about {busy['others_share']:.0%} of the "
                           f"{busy['cpus']} CPUs now: expect inflated, noisy times (fewer --threads than idle CPUs "
                           "helps)")
        return cal, ref_rate, plan, run_log

    def _measure_points(self, todo, backends: dict, cal: dict, plan: dict, ref_rate: float, llc, t_start: float,
                        progress: Progress) -> list[dict]:
        """Measure the points in order, saving after each; those projected past the budget are left out
        (returned), those projected too slow for any budget are stored as skipped."""
        s, r = self.settings, self.results
        assert r is not None
        # a longer warm-up than analyze's: on a VM an idle vCPU takes several calls (milliseconds each) to wake
        policy = TimingPolicy(budget_seconds=plan["per_point"], min_samples=3,
                              warmup_seconds=min(WARMUP_SECONDS, plan["per_point"] / 2))
        # projections start from the calibration and follow what each pair actually measured
        known = {pair: list(c.get("points") or []) for pair, c in cal.items()}
        onnx_have = plan["onnx_cached"]
        left_out = []
        progress.begin_points(len(todo), "sweep")
        for size, b, d in todo:
            w = Workload(*s.grid.shape(size), d)
            label = f"{b} {d} n={size}"
            t_call = projected_call(known[(b, d)], w.flops)
            cost = None if t_call is None else point_cost(
                w, b, t_call, plan["per_point"], llc, s.cold, ref_rate,
                onnx_cached=onnx_file(w) in onnx_have)
            elapsed = time.perf_counter() - t_start
            if cost is not None and elapsed + cost > s.budget_seconds:
                left_out.append({"size": size, "backend": b, "dtype": d})
                progress.advance(label + " (over budget)")
                continue
            if cost is not None and cost > SKIP_SHARE * s.budget_seconds:
                point = self._skipped_point(size, w, b, f"projected {cost:.1f} s for this point "
                                            f"({t_call:.2g} s a call), more than {SKIP_SHARE:.0%} of the "
                                            f"{s.budget_seconds:.3g} s budget; raise --budget to measure it")
            else:
                point = measure_point(backends[b], w, llc, policy, s.cold, s.onnx_dir)
                point["size"] = size
                if point.get("timing"):
                    known[(b, d)] = [p for p in known[(b, d)] if p["flops"] != w.flops] + [
                        {"size": size, "flops": w.flops, "seconds": point["timing"]["median_seconds"]}]
            r["measurements"].append(point)
            self.save_soon()
            progress.advance(label)
        return left_out

    def _plan(self, todo, cal, ref_rate, llc, elapsed) -> dict:
        """Projected cost of every point from the calibration, the per-point timing budget, the estimate."""
        s = self.settings
        remaining = max(s.budget_seconds - elapsed, 1.0)
        folder = Path(s.onnx_dir)
        onnx_have = {p.name for p in folder.glob("*.onnx")} if folder.is_dir() else set()
        work = {(size, b, d): Workload(*s.grid.shape(size), d) for size, b, d in todo}
        calls = {key: projected_call((cal.get(key[1:]) or {}).get("points"), w.flops) for key, w in work.items()}

        def costs(per_point):
            return {key: None if calls[key] is None else
                    point_cost(w, key[1], calls[key], per_point, llc, s.cold, ref_rate, onnx_file(w) in onnx_have)
                    for key, w in work.items()}

        fixed = costs(0.0)
        skip = {key for key, c in fixed.items() if c is not None and c > SKIP_SHARE * s.budget_seconds}
        spent = sum(c for key, c in fixed.items() if c is not None and key not in skip)
        per_point = min(MAX_POINT_SECONDS, max(MIN_POINT_SECONDS, (0.7 * remaining - spent) / max(len(todo), 1)))
        cost = costs(per_point)
        estimate = sum(c for key, c in cost.items() if c is not None and key not in skip)
        return {"per_point": per_point, "cost": cost, "call": calls, "skip": skip, "estimate": estimate + elapsed,
                "unknown": [key for key, c in cost.items() if c is None], "onnx_cached": onnx_have}

    def _skipped_point(self, size: int, w: Workload, backend: str, reason: str) -> dict:
        return {"backend": backend, "dtype": w.dtype, "size": size, "m": w.m, "k": w.k, "n": w.n, "flops": w.flops,
                "bytes": w.bytes_moved, "skipped": reason, "check": None, "timing": None, "error": None}

    def _check_onnx_disk(self, todo) -> None:
        specs = []

        for size, b, d in todo:
            if b == "onnxruntime":
                spec = onnxgen.ModelSpec(*self.settings.grid.shape(size), d)
                if not (Path(self.settings.onnx_dir) / spec.filename).is_file():
                    specs.append(spec)
        if specs:
            folder = ensure_writable_dir(self.settings.onnx_dir)
            onnxgen.check_resources(specs, folder)


def onnx_file(w: Workload) -> str:
    return ModelSpec(w.m, w.k, w.n, w.dtype).filename


def estimate_line(plan: dict, budget: float, n_points: int) -> str:
    est = plan["estimate"]
    line = (f"estimated run time about {est:.0f} s for {n_points - len(plan['skip'])} points "
            f"(budget {budget:.3g} s, {plan['per_point']:.2f} s of timing per point)")
    if plan["skip"]:
        line += (f"; {len(plan['skip'])} point(s) projected too slow for the budget (checked again from the "
                 "measured times as the sweep goes)")
    if est > budget:
        line += (f"; over the budget: the run stops at {budget:.3g} s keeping what it has "
                 f"(--budget {math.ceil(est * 1.2)} for all)")
    return line


def check_resume_settings(results: dict, settings: SweepSettings, out: Path) -> None:
    old = results.get("settings", {})
    new = settings.to_json()
    for key in ("threads", "cold"):
        if old.get(key) != new[key]:
            raise InputError(f"--resume {out}: it was run with {key}={old.get(key)!r}, not {new[key]!r}; "
                             "use the same options")
    og, ng = old.get("grid") or {}, new["grid"]
    for key in ("sizes", "m", "k", "n"):
        if og.get(key) != ng[key]:
            what = {"sizes": "--sizes", "m": "--m", "k": "--k", "n": "--n"}[key]
            raise InputError(f"--resume {out}: it was run with {what} {og.get(key)!r}, not {ng[key]!r}; "
                             "use the same grid (or leave the option out)")


# ------------------------------------------------------------------------------------------------
# The command (registered by cli.py as ``app.command("sweep")(sweep_command)``)
