"""``rwkvprobe analyze``: environment, bandwidth, ceilings, then every unique layer shape measured.

The results file is rewritten (atomically) after every point, so an interrupted run keeps what it
measured and ``--resume DIR`` measures only what is missing.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from rwkvprobe import process
from rwkvprobe.backends import (
    BACKEND_NAMES,
    DTYPES,
    Workload,
    available_backends,
    backend_class,
    base_weight,
    get_backend,
    onnxgen,
    shared_reference,
)
from rwkvprobe.backends.ort_backend import float_model, has_float_model
from rwkvprobe.backends.rknnlite_backend import check_models_runtime
from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import ensure_writable_dir
from rwkvprobe.measure import bandwidth, cachesize, contention, ggml_block, history, layerpass, nonmatmul, onnxblock, system
from rwkvprobe.measure.points import COMPUTE_SHAPES, measure_ceilings, measure_point, onnx_cache_dir, point_seconds
from rwkvprobe.measure.run import RESULTS, Run
from rwkvprobe.measure.timing import TimingPolicy, plan_rotation, set_affinity
from rwkvprobe.model.cost import roofline_seconds
from rwkvprobe.model.profile import LayerList, profile_json
from rwkvprobe.model.quant import QUANT_DTYPES, QUICK_WHATIF_LEFT_OUT, quantize_kinds
from rwkvprobe.npu import board, cores
from rwkvprobe.progress import Progress
from rwkvprobe.results import new_results

#: a point projected to take longer than this many times its budget for one call is skipped
SKIP_FACTOR = 4.0
#: STREAM's rule, in every mode: the bandwidth ceiling is the best of at least this many trials
BANDWIDTH_TRIALS = 10
#: a layer reading faster than this multiple of the measured bandwidth makes analyze probe again at once
REPROBE_EXCESS = 1.05
#: at most this many re-probes triggered by fast layers in one run (each costs a few tenths of a second)
MAX_REPROBES = 4
#: before measuring a contended point again, wait at most this long for the other processes to go quiet
QUIET_WAIT_SECONDS = 1.0
#: a base weight that cost this many seconds or more to generate is not freed while points put off that read it wait
#: (_next_point)
REGENERATE_SECONDS = 0.5
#: weight buffers of a layer point (the untimed eviction read between calls keeps every call cold)
POINT_COPIES = 4
#: seconds of --budget kept for what follows the layers (bandwidth probe, results, report and plots; and the process's
#: start where the budget counts from the run's: AnalyzeSettings.started), so that --budget is close to the command's
#: wall time
FINISH_RESERVE_SECONDS = 6.0
#: a layer point's timing budget never drops below this (its minimum samples are taken regardless)
MIN_POINT_SECONDS = 0.03
#: while the layers are timed the read bandwidth is probed again this often (about 0.05 s a probe): a VM's DRAM
#: bandwidth can come in bursts (1.6-1.8x for a few seconds), and the layers are judged at the middle probe of the
#: run (bandwidth.sustained_read_gbps), so that the same run twice gives the same verdict
PHASE_PROBE_SECONDS = 3.0
#: at most this many of the headline series' decode points near the kernel-limited line are measured again
NEAR_LINE_RECHECKS = 4
#: the headline's rechecks (near the line, heaviest) and the far-slow points' (Analysis._recheck_all_slow: 10x what
#: their series' ceilings predict, a wrong timing, not a slow kernel) may use what the finish reserve keeps beyond
#: this: the verdict rests on them. A ggml fp16 head (a third of a q4_0 decode) timed at 7.9 ms in one quick run of
#: rwkv-0b4 (3.7 in the next) was not measured again with 0.5 s left of the budget less FINISH_RESERVE_SECONDS,
#: where measuring it again costs 0.6-0.9 s, and the verdict read "mixed" (kernel-limited 47%) against the next
#: run's compute-bound
HEADLINE_RESERVE_SECONDS = 3.0
#: at most this many of the headline series' heaviest decode points (roofline.heavy_points) are measured again
HEAVY_RECHECKS = 3
#: then, while the budget has their cost, at most this many of every series' heaviest decode points
#: (roofline.series_heavy_points), each series' heaviest first
SERIES_HEAVY_RECHECKS = 40
#: the decode points of the call shapes holding HEAVY_WEIGHT_SHARE or more of the weights a token take at least
#: HEAVY_SAMPLES samples (timing.TimingPolicy.floor_samples): a ggml f16 head, a third of a q4_0 decode, ended its
#: budget on six calls of 3.3, 4.9, 3.3, 4.8, 7.3 and 3.3 ms in one quick run (median 4.1), sixteen (median 3.2)
#: in the next
HEAVY_SAMPLES = 12
#: (a quantized series keeps its head at a float type: rwkv-1b5's head, 8% of its weights, is a quarter of its bytes)
HEAVY_WEIGHT_SHARE = 0.05
#: the decode points of those shapes are timed in two windows, the second once every point has had its first, the
#: faster kept (Analysis._measure_points; a point's ``second_window`` record)
SECOND_WINDOWS = True
#: the ggml series' block graph is timed at most this many times: before, halfway through and after the layer points
#: (Analysis._time_block_again)
BLOCK_WINDOWS = 3
#: seconds of rounds for each series' timed non-matmul work, by --quick (AnalyzeSettings.nonmatmul_seconds)
NONMATMUL_SECONDS = {True: 0.3, False: 0.8}
#: the records a measurement gains when it is measured again (each recheck keeps the ones before it)
RECHECK_RECORDS = ("remeasured", "slow_recheck", "machine_slow_recheck", "near_line_recheck", "heavy_recheck",
                   "series_heavy_recheck", "second_window")
#: canary calls (contention.canary, each the best of a few) as the layer points begin: the run's reference speed
CANARY_REFERENCE_CALLS = 4
#: tests only: stop (sleeping, until interrupted) once this many layer points are saved, so that an
#: interrupt always arrives in the middle of a run
HOLD_ENV = "RWKVPROBE_TEST_HOLD_AFTER_POINTS"
#: tests only: a file the run makes once it holds there (_hold_for_test)
HOLD_MARK_ENV = "RWKVPROBE_TEST_HOLD_MARK"


@dataclass
class AnalyzeSettings:
    backends: list[str] | None  # None: every usable backend
    dtypes: list[str] | None  # None: each backend's defaults
    tokens: list[int]
    threads: int
    cpus: list[int] | None
    cold: bool = True
    budget_seconds: float = 100.0
    quick: bool = False
    rknn_dir: Path | None = None  # .rknn models for the rknnlite and rknn backends ('rwkvprobe convert')
    npu_cores: str = "auto"  # core masks, comma-separated: one series each (cores.parse_core_masks)
    device_id: str | None = None  # the adb device ID of the board for the rknn backend (board.py)
    block_size: int = 32  # blockwise-quantized weights
    #: kinds stored quantized in the model-level figures; None: each backend's rule (model.quant.quantize_kinds)
    quantize: list[str] | None = None
    onnx_dir: Path = field(default_factory=onnx_cache_dir)
    #: seconds of rounds for each series' timed non-matmul work; None: NONMATMUL_SECONDS (quick, default)
    nonmatmul_seconds: float | None = None
    #: judge the layers with the machine's earlier runs' bandwidth probes too, and record this run's (history.py)
    history: bool = True
    #: the torch series' decode layer pass in two windows (layerpass.LATER_WINDOW); validate, which times that part
    #: again between the real pass's rounds, leaves the second out
    later_window: bool = layerpass.LATER_WINDOW
    #: time.perf_counter() when the command began (process.COMMAND_START), where --budget counts from it; None:
    #: from the run's start (not kept in results.json: another process's clock)
    started: float | None = None

    def to_json(self) -> dict:
        return {"backends": self.backends, "dtypes": self.dtypes, "tokens": self.tokens, "threads": self.threads,
                "cpus": self.cpus, "cold": self.cold, "budget_seconds": self.budget_seconds, "quick": self.quick,
                "rknn_dir": str(self.rknn_dir) if self.rknn_dir else None, "npu_cores": self.npu_cores,
                "device_id": self.device_id,
                "block_size": self.block_size, "quantize": self.quantize, "nonmatmul_seconds": self.nonmatmul_seconds,
                "history": self.history, "later_window": self.later_window}


def default_out_dir(layers: LayerList) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("rwkvprobe-out") / f"{layers.profile.stem}-{stamp}"


def plan_series(settings: AnalyzeSettings) -> tuple[list[tuple[str, str]], list[dict]]:
    """(series, dtype) pairs to measure, and the skipped ones with the reason.

    The NPU backends give one series per core mask of ``npu_cores`` (``rknnlite[core0]``, ...).
    """

    masks = cores.parse_core_masks(getattr(settings, "npu_cores", "auto"))
    usable, unavailable = available_backends()
    skipped = []
    if settings.backends is None:  # every usable one, except those run only when named (torch-linear)
        names = [b for b in usable if not getattr(backend_class(b), "opt_in", False)]
        skipped += [{"backend": b, "dtype": None, "reason": why} for b, why in unavailable.items()]
    else:
        names = []
        for b in settings.backends:
            if b == cores.BACKEND:  # host-driven: rknn-toolkit2 in its environment, a board over adb
                if not hasattr(settings, "device_id"):
                    raise InputError("--backends rknn (a board driven over adb) is for 'rwkvprobe analyze'")
                board.check_ready(settings)
                names.append(b)
                continue
            if b not in BACKEND_NAMES:
                raise InputError(f"--backends: unknown backend '{b}' "
                                 f"(expected {', '.join(BACKEND_NAMES + (cores.BACKEND,))})")
            get_backend(b, settings.threads)  # raises one line naming the extra when it cannot run
            if b == "rknnlite" and settings.rknn_dir is None:
                raise InputError("--backends rknnlite needs --rknn DIR: the .rknn models 'rwkvprobe convert' wrote")
            if b == "rknnlite":  # models from a newer rknn-toolkit2 than the runtime here: refused, one line

                check_models_runtime(settings.rknn_dir)
            names.append(b)
    pairs = []
    for b in names:
        cls = board.RknnBoardBackend if b == cores.BACKEND else backend_class(b)
        wanted = list(settings.dtypes or cls.default_dtypes)
        # a backend whose quantized series keep some matrices at a float type (ggml: rwkv.cpp keeps the
        # head and the LoRA matrices f16) measures those with its float series: add it when not asked for
        keep = getattr(cls, "float_dtype", None)
        if keep and keep not in wanted and any(d in cls.formats for d in wanted):
            wanted.insert(0, keep)
        for d in wanted:
            if d not in cls.dtypes:
                skipped.append({"backend": b, "dtype": d, "reason": f"{b} has no {d} matmul"})
            elif (why := cls.dtype_unavailable(d)) is not None:
                skipped.append({"backend": b, "dtype": d, "reason": why})
            else:
                pairs += [(label, d) for label in cores.series_labels(b, masks)]
    if not pairs:
        raise InputError("nothing to measure: no backend here supports the requested dtypes "
                         f"({', '.join(settings.dtypes or [])})")
    return pairs, skipped


#: --quick (with the default dtypes) leaves out a series whose measured peak is below 1/this of the same backend's fp32
#: peak: torch fp16 on an x86 CPU without fp16 arithmetic measured 1.0 GFLOP/s against torch fp32's 176, its decode
#: layers ~50x slower than fp32's; its non-matmul block and points took ~7 s of a 46 s quick rwkv-1b5 run
QUICK_SLOW_DTYPE_FACTOR = 8.0
#: a --quick run of decode alone takes its peak compute from this many of points.COMPUTE_SHAPES, the smallest first:
#: the largest (512x2048x4096, 8.6 GFLOP) cost 0.55-0.82 s a float series in a quick rwkv-1b5 run (2.7 s of its 8.8
#: s of ceilings), preparing, checking against float64 and timing it, and the best of the three smaller shapes was
#: within 7% of the best of all four in three quick runs' numpy, torch and onnxruntime series; an M=1 layer reads
#: 0.5 FLOP a byte at fp32, far below any of these peaks' ridge points
QUICK_COMPUTE_SHAPES = 3
#: seconds of timing per what-if point (decode shapes of quantized formats, measured by default)
WHATIF_POINT_SECONDS = {True: 0.08, False: 0.2}  # by --quick
#: weight copies of a what-if point (each an onnxruntime session to build and check); the eviction read makes
#: up the rest of the cold traffic, so every call still finds its weight in DRAM
WHATIF_COPIES = 4


def plan_whatif(settings: AnalyzeSettings, pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], str | None]:
    """The quantized series measured by default for the smaller-weights what-if, or why there are none.

    Only when --dtypes is not given: for each planned backend with ``whatif_dtypes`` (onnxruntime: int8 and
    int4 MatMulNBits), the first format of each width that runs here, on the decode shapes of the kinds
    stored quantized. Explicit --dtypes measure exactly what they name (their quantized series are full ones).
    --quick leaves them out where full quantized series are planned (ggml's q8_0 and q4_0 by default): those
    answer the smaller-weights question on every layer, and the what-if cost a quick rwkv-1b5 run 4-5 s of its
    45 (QUICK_WHATIF_LEFT_OUT says so in the results; a run without --quick, or one resuming it, measures them).
    """
    if settings.dtypes is not None:
        if any(d not in ("fp32", "fp16", "bf16") for d in settings.dtypes):
            return [], None
        return [], "--dtypes named no quantized format"
    full = list(dict.fromkeys(f"{b} {d}" for b, d in pairs if d in QUANT_DTYPES))
    if settings.quick and full:
        return [], (f"{QUICK_WHATIF_LEFT_OUT}{' and '.join(full)} for the smaller weights (onnxruntime's int8/int4 "
                    "what-if is left out of --quick where quantized series are measured in full: run without --quick "
                    "for it)")
    out, why = [], []
    for b in dict.fromkeys(b for b, _ in pairs):
        cls = backend_class(b) if b in BACKEND_NAMES else None
        for group in getattr(cls, "whatif_dtypes", ()):
            ok = [d for d in group if cls.dtype_unavailable(d) is None]
            if ok and (b, ok[0]) not in pairs:
                out.append((b, ok[0]))
            elif not ok:
                why.append(f"{b} cannot run {'/'.join(group)} here")
    if out:
        return out, None
    if why:
        return [], "; ".join(why)
    return [], "no backend measured here has a quantized kernel (onnxruntime has: --backends onnxruntime)"


#: other spellings accepted by --dtypes (ggml's type names)
DTYPE_ALIASES = {"f32": "fp32", "f16": "fp16", "q4_K": "q4_k"}


def check_dtypes(dtypes: list[str] | None) -> list[str] | None:
    """The dtypes with ggml's spellings (f16, f32, q4_K) mapped to rwkvprobe's; one line for an unknown one."""

    out = []
    for d in dtypes or []:
        d = DTYPE_ALIASES.get(d, d)
        if d not in DTYPES:
            raise InputError(f"--dtypes: unknown dtype '{d}' (expected {', '.join(DTYPES)}; ggml's f32, f16 "
                             "and q4_K are accepted too)")
        if d not in out:
            out.append(d)
    return out if dtypes is not None else None


def _projected(c: dict, w: Workload, bandwidth_bps: float | None) -> float | None:
    """A point's projected time (model.cost) from its series' ceilings: the cold GEMV rate where measured,
    else the DRAM bandwidth; None before the peak is known."""
    if not c.get("peak_gflops"):
        return None
    bw = c["gemv_gbps"] * 1e9 if c.get("gemv_gbps") else bandwidth_bps
    return float(roofline_seconds(w.flops, w.bytes_moved, c["peak_gflops"] * 1e9, bw, c.get("overhead_seconds") or 0.0))


class _Laps:
    """Wall time per stage of a run, added into ``results["stage_seconds"]`` (across resumes)."""

    def __init__(self, stages: dict):
        self.stages = stages
        self.mark = time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        self.stages[name] = self.stages.get(name, 0.0) + seconds

    def lap(self, name: str) -> None:
        """The time since the last lap counts to ``name``."""
        now = time.perf_counter()
        self.add(name, now - self.mark)
        self.mark = now


def _far_slower(point: dict, projected: float | None) -> bool:
    t = point_seconds(point)
    return bool(t and projected and t > contention.SLOW_POINT_FACTOR * projected)


def _setup_projection(spent: list[tuple[float, float]], weight_bytes: list[float]) -> float:
    """Seconds that preparing and checking the points of ``weight_bytes`` will take, from ``spent`` (seconds,
    weight bytes) of the points done: the cheapest point's cost each, plus the rest per weight byte."""
    if not spent:
        return 0.0
    fixed = min(c for c, _ in spent)
    extra, nbytes = sum(c - fixed for c, _ in spent), sum(b for _, b in spent)
    rate = extra / nbytes if nbytes > 0 else 0.0
    return sum(fixed + rate * b for b in weight_bytes)


class Analysis(Run):
    """One analyze run; ``run()`` measures what ``results`` still lacks, saving after each point."""

    KIND = "analyze"
    settings: AnalyzeSettings

    def __init__(self, layers: LayerList, settings: AnalyzeSettings, out_dir: Path, results: dict | None = None,
                 lock=None):
        super().__init__(settings, out_dir, results, lock)
        self.layers = layers
        #: the verdict's choice of headline points near the kernel-limited line (roofline.near_line_points, set by
        #: the command: the verdict sits above this layer): (point key, kernel share), the most time first
        self.near_line: Callable[[dict, LayerList], list[tuple[tuple, float]]] | None = None
        #: and of its heaviest points (roofline.heavy_points)
        self.heavy: Callable[[dict, LayerList], list[tuple[tuple, float]]] | None = None
        #: and of every series' heaviest points (roofline.series_heavy_points)
        self.series_heavy: Callable[[dict, LayerList], list[tuple[tuple, float]]] | None = None
        #: the read probes' array and workers, kept from the first probe after the full one to the end of run()
        self._reader: bandwidth.ReadProbe | None = None
        #: (non-matmul entry, its layerpass.Rounds) for a later window of its rounds (during or after the points)
        self._windows: list[tuple[dict, layerpass.Rounds]] = []
        #: time.perf_counter() at the start of run() (the probes' at_seconds count from it)
        self._t_run = time.perf_counter()

    # -- set-up ------------------------------------------------------------------------------
    @classmethod
    def start(cls, layers: LayerList, settings: AnalyzeSettings, out_dir: Path | None) -> "Analysis":
        out, lock = cls.new_folder(out_dir or default_out_dir(layers))
        return cls(layers, settings, out, lock=lock)

    @classmethod
    def resume(cls, layers: LayerList, settings: AnalyzeSettings, out_dir: Path) -> "Analysis":
        def check(results: dict, out: Path) -> None:
            if results.get("profile", {}).get("name") != layers.profile.name:
                raise InputError(f"{out / RESULTS}: holds profile {results.get('profile', {}).get('name')!r}, "
                                 f"not {layers.profile.name!r}")
            old = results.get("settings", {})
            for key in ("tokens", "threads", "cold"):
                if old.get(key) != settings.to_json()[key]:
                    raise InputError(f"--resume {out}: it was run with {key}={old.get(key)!r}, "
                                     f"not {settings.to_json()[key]!r}; use the same options")

        out, lock, results = cls.reopen(out_dir, check)
        return cls(layers, settings, out, results, lock=lock)

    # -- the run -------------------------------------------------------------------------------
    def run(self, progress: Progress) -> dict:
        """Measure everything missing: bandwidth, board series, ceilings, non-matmul work, block graphs, the layer
        points (re-probing the bandwidth between them), then the bandwidth again."""
        try:
            return self._run(progress)
        finally:
            self._windows.clear()  # the layer passes' rings, where a run ends before their later window
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _run(self, progress: Progress) -> dict:
        s = self.settings
        self._t_run = t_run = time.perf_counter()
        # where the budget counts from (``t_start``, passed on): the command's start where it is known, so that
        # --budget is about the command's wall time whatever its imports cost
        t_start = min(s.started, t_run) if s.started is not None else t_run
        pinned = set_affinity(s.cpus)
        pairs, board_pairs, whatif, backends = self._setup(pinned)
        process.settle()  # the backends' modules are imported now
        r = self.results
        assert r is not None
        if t_start < t_run:
            r["before_run_seconds"] = t_run - t_start
        if r.get("cache"):  # a resumed run sizes its cold measurements as its first process did
            cachesize.adopt(r["cache"])
        r["cache"] = cachesize.decide()
        llc = r["cache"]["bytes"]
        if llc != r["cache"]["reported_bytes"]:
            progress.note(f"last-level cache: {r['cache']['how']}")
        laps = _Laps(r.setdefault("stage_seconds", {}))
        laps.lap("setup")
        if not r.get("bandwidth"):
            progress.stage("memory bandwidth")
            r["bandwidth"] = bandwidth.measure_bandwidth(threads=[s.threads], trials=BANDWIDTH_TRIALS, cpus=s.cpus,
                                               kernels=("copy", "triad", "read"), progress=progress.note)
            r["bandwidth"].update(when="before the layers", at=time.time())
            self.save()
        r.setdefault("bandwidth_probes", [])
        if s.history and "bandwidth_history" not in r:  # a resumed run keeps what its first process took up
            earlier = history.earlier_probes(s.threads, s.cpus, r["bandwidth"].get("engine"))
            if earlier is not None:
                r["bandwidth_history"] = earlier
        if s.history and "canary_history" not in r:  # the machine's speed in its earlier runs (the canary)
            canaries = history.earlier_canaries(s.threads, s.cpus)
            if canaries is not None:
                r["canary_history"] = canaries
        laps.lap("bandwidth")
        if board_pairs:
            board.run_series(self, board_pairs, progress)
            laps.lap("board")
        self._measure_all_ceilings(pairs, whatif, backends, llc, progress, laps)
        laps.lap("ceilings")
        pairs = self._leave_out_slow_dtypes(pairs, whatif, progress)
        self._measure_nonmatmul(pairs, llc, s.quick, progress)
        laps.lap("non-matmul")
        self._measure_block_graphs(pairs, llc, s.quick, progress)
        laps.lap("block graphs")
        points = self._plan_points(pairs, whatif)
        first_new = len(r["measurements"])  # a resumed run's earlier points were timed by another process
        self._measure_points(points, whatif, backends, llc, t_start, progress, laps)
        if self._windows:  # no point outweighed their rings (the points run them before those)
            laps.lap("layers")
            self._measure_later_windows(t_start, progress)
            laps.lap("non-matmul")
        if points:
            # the ggml series' block graph once more, then what is left of the budget goes first to the points the
            # headline rests on, then to the points timed while the machine ran slow
            laps.lap("layers")
            self._time_block_again(llc, t_start, progress)
            laps.lap("non-matmul")
            self._recheck_near_line(backends, llc, t_start, progress, first_new)
            self._recheck_heavy(backends, llc, t_start, progress, first_new)
            self._recheck_machine_slow(backends, llc, t_start, progress, first_new)
            self._recheck_series_heavy(backends, llc, t_start, progress, first_new)
        laps.lap("layers")
        # the layers' weights are done with: free the cached base weight (up to the head's, 0.5 GB for 1.5B at
        # fp32)
        base_weight.cache_clear()
        if points and not any(p.get("when") == "after the layers" for p in r["bandwidth_probes"]):
            progress.stage("memory bandwidth again")
            self._probe("after the layers")
            laps.lap("bandwidth")
        kept = self._record_probes() if s.history else True
        r["after"] = system.snapshot_dynamic()
        r["warnings"] = system.environment_warnings(r["environment"], r.get("before"), r["after"])
        r["warnings"] += _slow_machine_warning(r)
        if not kept:
            r["warnings"].append(f"Note: the machine's bandwidth history ({history.history_path()}) could not be "
                                 f"written: this run's probes are not kept for the next runs. Fix: set "
                                 f"{history.HISTORY_ENV} to a writable file, or to off.")
        r["elapsed_seconds"] = r.get("elapsed_seconds", 0.0) + (time.perf_counter() - t_run)
        self.save(final=True)
        return r

    def _setup(self, pinned) -> tuple[list, list, list, dict]:
        """A new results dict (or the resumed one) with its series planned; (pairs measured here, board
        pairs, what-if pairs, {label: backend})."""
        s = self.settings
        if self.results is None:
            env = system.capture_environment()
            self.results = new_results("analyze", env, s.to_json())
            self.results["settings"]["pinned_cpus"] = pinned
            self.results["profile"] = profile_json(self.layers)
            self.results["before"] = system.snapshot_dynamic()
            self.results.update({"bandwidth": None, "ceilings": [], "measurements": [], "skipped": []})
        r = self.results
        pairs, skipped = plan_series(s)
        if "whatif_series" not in r["settings"] or (  # a quick run resumed as a full one: the what-if quick left out
                not s.quick and (r["settings"].get("whatif_missing") or "").startswith(QUICK_WHATIF_LEFT_OUT)):
            planned, why = plan_whatif(s, pairs)
            r["settings"]["whatif_series"] = [list(x) for x in planned]
            r["settings"]["whatif_missing"] = why
        whatif = [tuple(x) for x in r["settings"]["whatif_series"]]
        pairs = pairs + [x for x in whatif if x not in pairs]
        known_skips = {(x["backend"], x["dtype"]) for x in r["skipped"]}
        r["skipped"] += [x for x in skipped if (x["backend"], x["dtype"]) not in known_skips]
        pairs, board_pairs = cores.split_board(pairs)  # the rknn series run in the toolkit worker
        backends = {label: board.instantiate(label, s) for label in {b for b, _ in pairs}}
        r["backends"] = {name: b.describe() for name, b in backends.items()}
        r["backends"].update(board.describe(board_pairs, s))
        self.save()
        return pairs, board_pairs, whatif, backends

    def _leave_out_slow_dtypes(self, pairs: list, whatif: list, progress: Progress) -> list:
        """--quick with the default dtypes: the series whose measured peak is below 1/QUICK_SLOW_DTYPE_FACTOR of the
        same backend's fp32 peak, left out of the rest of the run (their ceiling kept, marked ``left_out``, and a
        line in ``skipped``): no candidate on this machine, and the costliest to time."""
        s, r = self.settings, self.results
        assert r is not None
        if not s.quick or s.dtypes is not None:  # a quick run resumed as a full one measures what quick left out
            back = {(c["backend"], c["dtype"]) for c in r["ceilings"] if c.pop("left_out", None)}
            r["skipped"] = [x for x in r["skipped"] if (x["backend"], x["dtype"]) not in back]
            return pairs
        by_key = {(c["backend"], c["dtype"]): c for c in r["ceilings"]}
        known = {(x["backend"], x["dtype"]) for x in r["skipped"]}
        kept = []
        for b, d in pairs:
            c, fp32 = by_key.get((b, d)), by_key.get((b, "fp32"))
            mine, base = (c or {}).get("peak_gflops"), (fp32 or {}).get("peak_gflops")
            if c is None or d == "fp32" or (b, d) in whatif or not mine or not base:
                kept.append((b, d))
                continue
            if not c.get("left_out") and mine * QUICK_SLOW_DTYPE_FACTOR >= base:
                kept.append((b, d))
                continue
            why = (f"left out of --quick: its measured peak, {mine:.3g} GFLOP/s, is 1/{base / mine:.0f} of {b} fp32's "
                   f"{base:.3g} (no fast {d} matmul on this CPU); the default run measures it")
            if not c.get("left_out"):
                c["left_out"] = why
                progress.note(f"{b} {d}: {why}")
            if (b, d) not in known:
                r["skipped"].append({"backend": b, "dtype": d, "reason": why})
        return kept

    def _measure_all_ceilings(self, pairs, whatif, backends, llc, progress: Progress, laps: "_Laps") -> None:
        s, r = self.settings, self.results
        assert r is not None
        policy = TimingPolicy(budget_seconds=0.15 if s.quick else 0.4, min_samples=3)
        have = {(c["backend"], c["dtype"]) for c in r["ceilings"]}
        todo = [p for p in pairs if p not in have]
        for i, (b, d) in enumerate(todo):
            progress.stage(f"ceilings {i + 1}/{len(todo)}: {b} {d}")
            t_ceil = time.perf_counter()
            # --quick leaves out the cold GEMV of CPU backends (W comes from the bandwidth probe); a board's
            # series keep theirs (board.py: the NPU's own bandwidth); what-if series take a light set
            r["ceilings"].append(measure_ceilings(backends[b], d, llc, policy, s.onnx_dir, progress.note,
                                                  block_size=s.block_size, gemv=not s.quick,
                                                  compute_shapes=self._compute_shapes(b), light=(b, d) in whatif))
            if (b, d) in whatif:
                laps.add("what-if ceilings", time.perf_counter() - t_ceil)
            self.save()
        shared_reference.clear()  # the ceilings' shapes are not the layers'

    def _plan_points(self, pairs, whatif) -> list[tuple]:
        """The layer points still to measure, shape-outermost so one base weight serves every backend and dtype;
        what-if series on the decode shapes of the quantized kinds only; a prefill chunk's layers without the
        head, which a chunk runs for its last token only (Layer.chunk_rows)."""
        s, r = self.settings, self.results
        assert r is not None
        done = {(p["backend"], p["dtype"], p["m"], p["k"], p["n"]) for p in r["measurements"]}
        quantized = {x.call_shape for x in self.layers.layers if x.kind in quantize_kinds(s.quantize)}
        runs_at = {m: set(self.layers.unique_shapes(m)) for m in s.tokens}  # a chunk runs the head at M = 1 only
        # in a shape, the series that read the cached base weight first: it is freed before the others (measure_point)
        pairs = sorted(pairs, key=lambda p: not _reads_base_weight(*p))
        return [(m, k, n, b, d) for (k, n) in self.layers.unique_shapes() for m in s.tokens for (b, d) in pairs
                if (k, n) in runs_at[m] and (b, d, m, k, n) not in done and self._wanted(b, d, m, k, n)
                and ((b, d) not in whatif or (m == 1 and (k, n) in quantized))]

    def _measure_points(self, points, whatif, backends, llc, t_start: float, progress: Progress,
                        laps: "_Laps") -> None:
        """Time every point within what is left of the budget, saving after each; probe the bandwidth again
        every PHASE_PROBE_SECONDS or when a layer reads faster than it, the peak when one beats it."""
        s, r = self.settings, self.results
        assert r is not None
        ceilings = {(c["backend"], c["dtype"]): c for c in r["ceilings"]}
        bw_bps = (bandwidth.best_read_gbps(r) or 0.0) * 1e9
        probe_seconds, reference = 0.0, None
        if points:  # a probe as the layers begin (bandwidth.sustained_read_gbps); its cost plans the others
            self._open_reader()  # not counted in that cost: it allocates the probes' array once
            t_probe = time.perf_counter()
            bw_bps = max(bw_bps, self._probe("before the layer points"))
            probe_seconds = time.perf_counter() - t_probe
            # the machine's speed as the points begin (each point times the canary too): the best of a few
            reference = min(contention.canary() for _ in range(CANARY_REFERENCE_CALLS))
            r["canary_reference_seconds"] = min(reference, r.get("canary_reference_seconds") or reference)
        n_whatif = sum(1 for x in points if (x[3], x[4]) in whatif)
        # the decode points of the heavy shapes (each HEAVY_WEIGHT_SHARE or more of a token's weights) are timed in
        # two windows, the second once every point has had its first, the faster kept: one window is one draw of the
        # machine's phase (seconds long), and in a pair of quick runs of rwkv-0b4 one onnxruntime fp32 ffn.key window
        # read 941 µs a call (its first ten calls 0.9-1.2 ms, the last five 0.59-0.65) against 537 in the other run,
        # a sixth of the series' decode. Planned from the start, so that every point's budget counts them
        twice = {i for i, (m, k, n, b, d) in enumerate(points) if SECOND_WINDOWS and self._heavy_decode(m, k, n)}
        whatif_policy = TimingPolicy(budget_seconds=WHATIF_POINT_SECONDS[s.quick], min_samples=3)
        elapsed = time.perf_counter() - t_start
        later = self._later_windows_seconds()  # the layer passes' later windows, during or after the points
        remaining = max(s.budget_seconds - elapsed - FINISH_RESERVE_SECONDS - later
                        - 2.5 * n_whatif * whatif_policy.budget_seconds, 1.0)
        remaining = max(remaining * (1.0 - probe_seconds / PHASE_PROBE_SECONDS), 1.0)  # the phase probes to come
        # the plan: a point's budget if preparing and checking it cost ~1.5x its timing (decides what is skipped)
        n_twice_whatif = sum(1 for i in twice if (points[i][3], points[i][4]) in whatif)
        remaining = max(remaining - 2.5 * n_twice_whatif * whatif_policy.budget_seconds, 1.0)
        per_point = min(1.0, max(0.05, remaining / max(len(points) - n_whatif + len(twice) - n_twice_whatif, 1) / 2.5))
        self._write_models(points)
        progress.begin_points(len(points) + len(twice))
        hold = int(os.environ.get(HOLD_ENV) or 0)
        reprobes = 0
        slow: list[tuple] = []  # points far slower than their ceilings predict: (index, projection, workload, ...)
        last_probe = time.perf_counter()
        spent_outside_timing: list[tuple[float, float]] = []  # (prepare + check, weight bytes) of each point so far
        workloads = [backends[b].workload(m, k, n, d, s.block_size) for m, k, n, b, d in points]
        weight_bytes = [w.weight_bytes for w in workloads]
        queue = collections.deque(range(len(points)))  # in the plan's order; a point put off goes to its end
        put_off: dict[int, float] = {}  # plan index: the canary's ratio to the run's best when it was put off
        seconds: collections.deque[int] = collections.deque()  # second windows to come, in the order of the firsts
        at: dict[int, int] = {}  # plan index: where its first window's point sits in the measurements
        put_off_again: dict[int, float] = {}  # the second windows put off (the canary's ratio then)
        # this process's best canary so far (a fresh process's first canaries run about 1.5x slow: a resumed run's
        # earlier ones are not compared with)
        best_canary = reference
        timed = 0  # points done (timed, or skipped)
        shape = None  # the (K, N) of the point before
        while queue or seconds:
            again = not queue  # every point timed once: the heavy ones' second windows
            i = _next_point(seconds if again else queue, points)
            m, k, n, b, d = points[i]
            w = workloads[i]
            if (k, n) != shape:  # the checks' kept references are of the shape before (the plan goes shape by shape)
                shared_reference.clear()
                shape = (k, n)
            if self._windows and weight_bytes[i] >= min(rounds.ring_bytes for _, rounds in self._windows):
                # the layer passes' later windows, before the points whose weights outweigh their rings (the heads,
                # last in the plan): their rings go before the run's peak of memory (0.4 GB in fp32 on a 1.5B,
                # beside a head point's four 0.5 GB copies)
                laps.lap("layers")
                self._measure_later_windows(t_start, progress)
                laps.lap("non-matmul")
                later = 0.0
            proj = _projected(ceilings[(b, d)], w, bw_bps)
            label = f"{b} {d} M={m} {k}x{n}"
            # the timing budget adapts to what is left of --budget: what preparing and checking will cost the
            # points still to come is set aside first, projected from what it cost so far (a fixed part and a
            # part growing with the weight's bytes: the head's 0.5 GB costs seconds to prepare and check, and
            # coming last, it overran a run planned on the average point); the second windows to come count too
            left = self._budget_left(t_start) - later
            to_come = ([weight_bytes[i]] + [weight_bytes[j] for j in queue] + [weight_bytes[j] for j in seconds]
                       + [weight_bytes[j] for j in (i, *queue) if j in twice and j not in at])
            setup_left = _setup_projection(spent_outside_timing, to_come)
            budget = min(per_point, max(MIN_POINT_SECONDS, (left - setup_left) / len(to_come)))
            policy = TimingPolicy(budget_seconds=budget, min_samples=3,
                                  floor_samples=HEAVY_SAMPLES if self._heavy_decode(m, k, n) else 0)
            if again:
                first = r["measurements"][at[i]]
                if not self._budget_has(first, t_start):  # no time left for it: its first window stands
                    progress.advance(f"{label} (second window left out)")
                    continue
                if (queue or seconds) and i not in put_off_again and (ratio := contention.slow_now(best_canary)):
                    put_off_again[i] = ratio  # as a first window is (below), once
                    seconds.append(i)
                    continue
                whatif_point = (b, d) in whatif  # as its first window was timed
                point, t2 = self._faster_again(first, backends[b], w, llc, whatif_policy if whatif_point else policy,
                                               WHATIF_COPIES if whatif_point else POINT_COPIES)
                point["second_window"] = {"median_seconds": point_seconds(first), "again_median_seconds": t2}
                if i in put_off_again:
                    point["second_window"]["put_off"] = {"canary_ratio": put_off_again[i]}
                r["measurements"][at[i]] = point
                cost = point.get("overhead_seconds") or {}
                spent_outside_timing.append((cost.get("prepare", 0.0) + cost.get("check", 0.0), w.weight_bytes))
                self.save_soon()
                progress.advance(f"{label} (second window)")
            else:
                # the check runs every weight copy once, then warm-up and the minimum samples follow
                calls = plan_rotation(w.weight_bytes, llc, s.cold, max_copies=POINT_COPIES).copies + policy.min_samples + 1
                if proj is not None and proj * calls > SKIP_FACTOR * per_point:
                    point = {"backend": b, "dtype": d, "m": m, "k": k, "n": n, "flops": w.flops,
                             "bytes": w.bytes_moved,
                             "skipped": f"projected {proj:.2f} s a call ({calls} calls at least) from this backend's "
                                        f"measured ceilings (per-point budget {per_point:.2f} s); raise --budget to "
                                        "measure it",
                             "check": None, "timing": None, "error": None}
                else:
                    if queue and i not in put_off and (ratio := contention.slow_now(best_canary)):
                        # the machine runs slow now (its slow phases last about a second to several): this point is
                        # timed after the others, once (a phase that outlasts them is flagged, and measured again
                        # after the others while the budget has its cost), or before its weight is freed (_next_point)
                        put_off[i] = ratio
                        queue.append(i)
                        continue
                    t_point = time.perf_counter()
                    whatif_point = (b, d) in whatif
                    pol = whatif_policy if whatif_point else policy
                    # at most POINT_COPIES weight buffers a point (the untimed eviction read makes up the rest of the
                    # cold traffic): preparing and checking 16 copies was most of a run's time
                    copies = WHATIF_COPIES if whatif_point else POINT_COPIES
                    point = measure_point(backends[b], w, llc, pol, s.cold, s.onnx_dir, max_copies=copies)
                    cost = point.get("overhead_seconds") or {}
                    spent_outside_timing.append((cost.get("prepare", 0.0) + cost.get("check", 0.0), w.weight_bytes))
                    spare = left - setup_left - len(to_come) * MIN_POINT_SECONDS
                    if ((point.get("contention") or {}).get("contended")
                            and spare > 2 * (cost.get("prepare", 0.0) + cost.get("check", 0.0)
                                             + cost.get("timing", 0.0)) + QUIET_WAIT_SECONDS):
                        point = self._remeasure(point, backends[b], w, llc, pol, progress, label, copies)
                    elif proj is not None and _far_slower(point, proj):  # measured again after the others
                        slow.append((len(r["measurements"]), proj, w, pol, label, copies))
                    if whatif_point:
                        laps.add("what-if points", time.perf_counter() - t_point)
                    point["at"] = time.time()  # when it was timed (beside the bandwidth probes' own times)
                    if i in put_off:
                        point["put_off"] = {"canary_ratio": put_off[i]}
                r["measurements"].append(point)
                if i in twice and point_seconds(point) is not None:
                    at[i] = len(r["measurements"]) - 1
                    seconds.append(i)
                elif i in twice:  # skipped, failed or wrong: no second window (its place in the progress is done)
                    twice.discard(i)
                    progress.advance(f"{label} (no second window)")
                self.save_soon()
                progress.advance(label)
                timed += 1
                if timed == len(points) // 2 and timed:  # halfway: the ggml block graph once more
                    laps.lap("layers")
                    self._time_block_again(llc, t_start, progress)
                    laps.lap("non-matmul")
                if hold and len(r["measurements"]) >= hold:
                    self.save()
                    _hold_for_test()
            # this process's best canary so far, with the one timed around this point (none where it was skipped)
            seen = (point.get("contention") or {}).get("canary_seconds")
            best_canary = min(filter(None, (best_canary, seen)), default=None)
            t = point_seconds(point)
            if s.cold and t and point["bytes"] / t > REPROBE_EXCESS * bw_bps and reprobes < MAX_REPROBES:
                reprobes += 1
                progress.note(f"{label} read {point['bytes'] / t / 1e9:.1f} GB/s, above the measured "
                              f"{bw_bps / 1e9:.1f} GB/s: probing the bandwidth again")
                bw_bps = max(bw_bps, self._probe(f"again after {label} read {point['bytes'] / t / 1e9:.1f} GB/s"))
                last_probe = time.perf_counter()
            elif time.perf_counter() - last_probe > PHASE_PROBE_SECONDS:
                bw_bps = max(bw_bps, self._probe(f"between layers, after {label}"))
                last_probe = time.perf_counter()
            c = ceilings[(b, d)]
            if (t and c.get("peak_gflops") and point["flops"] / t > REPROBE_EXCESS * c["peak_gflops"] * 1e9
                    and not c.get("compute_again")):
                progress.note(f"{label} ran at {point['flops'] / t / 1e9:.1f} GFLOP/s, above {b} {d}'s measured peak "
                              f"{c['peak_gflops']:.1f}: measuring the peak again")
                self._compute_again(backends[b], c, llc, label)

        shared_reference.clear()
        self._recheck_all_slow(slow, backends, llc, t_start, progress)

    def _heavy_shapes(self) -> set[tuple[int, int]]:
        """The call shapes holding HEAVY_WEIGHT_SHARE or more of the weights a token (the largest shares of a decode:
        rwkv-0b4's att and ffn matrices, 26% each, and its head, 18%; rwkv-1b5's head, 8%)."""
        per_token: dict[tuple[int, int], int] = {}
        for x in self.layers.layers:
            per_token[x.call_shape] = per_token.get(x.call_shape, 0) + x.call_shape[0] * x.call_shape[1] * x.calls
        total = sum(per_token.values())
        return {shape for shape, w in per_token.items() if w >= HEAVY_WEIGHT_SHARE * total}

    def _heavy_decode(self, m: int, k: int, n: int) -> bool:
        """A decode point (M = 1) of a heavy shape (_heavy_shapes): it takes HEAVY_SAMPLES at least, in two windows."""
        return m == 1 and (k, n) in self._heavy_shapes()

    def _recheck_all_slow(self, slow: list[tuple], backends: dict, llc, t_start: float, progress: Progress) -> None:
        """The points far slower than their own series' ceilings predict (contention.SLOW_POINT_FACTOR), measured
        again once the others are done (a slow mode lasts a fraction of a second; the plan leaves little spare
        while points remain): the furthest from their projection first, while the budget has their cost; the
        faster kept, both recorded (``slow_recheck``). Once a ggml q4_0 GEMV ran 11-23 ms a call for a fraction
        of a second (0.04 ms otherwise) with no other process on the CPUs: one such point made a decode 15x slower.
        They may use the finish reserve beyond HEADLINE_RESERVE_SECONDS: in a quick rwkv-0b4 run beside another
        process two ggml f16 points of 15 µs timed at 16 ms a call made ggml's decodes 30x slower (780 ms a token)
        and numpy fp32 the headline, with the plan spent and each recheck costing under 0.2 s."""
        r = self.results
        assert r is not None
        furthest = sorted(slow, key=lambda x: -(point_seconds(r["measurements"][x[0]]) or 0.0) / x[1])
        for i, proj, w, pol, label, copies in furthest:
            point = r["measurements"][i]
            if not _far_slower(point, proj):  # its second window (a heavy decode point) was not
                continue
            if not self._budget_has(point, t_start, HEADLINE_RESERVE_SECONDS):
                break
            t = point_seconds(point)
            assert t is not None
            progress.note(f"{label}: {t * 1e3:.3g} ms a call, {t / proj:.0f}x what its ceilings predict: "
                          "measuring again")
            kept, t2 = self._faster_again(point, backends[point["backend"]], w, llc, pol, copies)
            kept["slow_recheck"] = {"median_seconds": t, "again_median_seconds": t2, "projected_seconds": proj}
            r["measurements"][i] = kept
            self.save_soon()

    def _recheck_machine_slow(self, backends: dict, llc, t_start: float, progress: Progress, first: int) -> None:
        """The layer points timed while the machine ran slow (their canary over contention.CANARY_SLOW x the run's
        best: another guest busy on the same cores, which neither steal nor other processes show), measured again
        once the others are done, the most time a token first, while the budget has their cost; the faster kept,
        both recorded (``machine_slow_recheck``). Only the points this process timed (from index ``first``): a
        resumed run keeps what it resumed as it was, and a canary timed by another process is not this run's to
        compare (a fresh process's first canaries run about 1.5x slow). Two back-to-back quick runs of rwkv-0b4 once differed by 29-35%
        on every ggml series (a q4_0 GEMV 50.5 against 69.3 µs) with no steal and no other process seen."""
        r = self.results
        assert r is not None
        best = contention.canary_best(r["measurements"], r.get("canary_reference_seconds"))
        count = {x.call_shape: x.calls for x in self.layers.layers}
        slow = []
        for i, p in enumerate(r["measurements"][first:], start=first):
            ratio = contention.canary_ratio(p, best)
            t = point_seconds(p)
            if (ratio and ratio >= contention.CANARY_SLOW and t and p["backend"] in backends
                    and not any(p.get(key) for key in RECHECK_RECORDS[1:])):  # measured twice already
                slow.append((t * count.get((p["k"], p["n"]), 1), i, ratio))
        for _, i, ratio in sorted(slow, reverse=True):
            point = r["measurements"][i]
            if not self._budget_has(point, t_start):
                break
            b, d, m, k, n = point["backend"], point["dtype"], point["m"], point["k"], point["n"]
            t = point_seconds(point)
            assert t is not None
            progress.note(f"{b} {d} M={m} {k}x{n}: timed while the machine ran {ratio:.2f}x slower than its best: "
                          "measuring again")
            kept, t2 = self._again_as_before(point, backends, llc)
            kept["machine_slow_recheck"] = {  # the new canary where the new timing is kept
                "median_seconds": t, "again_median_seconds": t2, "canary_ratio": ratio,
                "again_canary_ratio": None if kept is point else contention.canary_ratio(kept, best)}
            r["measurements"][i] = kept
            self.save_soon()

    def _budget_left(self, t_start: float, reserve: float = FINISH_RESERVE_SECONDS) -> float:
        """Seconds left of --budget, less ``reserve``, counted from ``t_start`` (the command's start, or the run's)."""
        return self.settings.budget_seconds - reserve - (time.perf_counter() - t_start)

    def _budget_has(self, point: dict, t_start: float, reserve: float = FINISH_RESERVE_SECONDS) -> bool:
        """Whether what is left of --budget (less ``reserve``) covers measuring ``point`` once more (preparing and
        timing it: a recheck reuses its check, _faster_again), its base weight generated again where it reads one
        and another shape's is kept now (a quick rwkv-1b5 run began a recheck of a head with 0.3 s of prepare on
        record, and spent 3.5 s generating its weight past the budget)."""
        cost = point.get("overhead_seconds") or {}
        need = cost.get("prepare", 0.0) + cost.get("timing", 0.0) - cost.get("base_weight", 0.0)
        if _reads_base_weight(point["backend"], point["dtype"]) and not base_weight.holds(point["k"], point["n"]):
            need += base_weight.seconds(point["k"], point["n"])
        return self._budget_left(t_start, reserve) >= need

    def _faster_again(self, point: dict, backend, w: Workload, llc, policy, max_copies: int | None
                      ) -> tuple[dict, float | None]:
        """``point`` measured once more (the rechecks after the other points): the faster of the two (the new one
        stamped with its time), and the new median."""
        again = measure_point(backend, w, llc, policy, self.settings.cold, self.settings.onnx_dir, max_copies=max_copies,
                              checked=point.get("check"))
        t, t2 = point_seconds(point), point_seconds(again)
        if t2 is not None and t is not None and t2 < t:
            again["at"] = time.time()
            # what earlier checks recorded of this point stays with it (a far-slow point rechecked again near the
            # line lost its slow_recheck record), and that it was put off
            again.update({key: point[key] for key in (*RECHECK_RECORDS, "put_off") if key in point})
            return again, t2
        return point, t2

    def _again_as_before(self, point: dict, backends: dict, llc) -> tuple[dict, float | None]:
        """_faster_again for a saved point, its workload rebuilt from the point and timed for as long as its first
        timing took (at least MIN_POINT_SECONDS), with as many samples at least as its first timing had to take (a
        decode point of a heavy shape: HEAVY_SAMPLES; a ggml f16 head rechecked on three calls, 4.41-4.56 ms, was kept
        over its twelve-call median of 4.66)."""
        b, d, m, k, n = point["backend"], point["dtype"], point["m"], point["k"], point["n"]
        budget = max(MIN_POINT_SECONDS, (point.get("overhead_seconds") or {}).get("timing", MIN_POINT_SECONDS))
        floor = HEAVY_SAMPLES if self._heavy_decode(m, k, n) else 0
        return self._faster_again(point, backends[b], backends[b].workload(m, k, n, d, self.settings.block_size), llc,
                                  TimingPolicy(budget_seconds=budget, min_samples=3, floor_samples=floor), POINT_COPIES)

    def _record_probes(self) -> bool:
        """Add this run's checked read probes and its canary to the machine's history (history.py; never stops the
        run); False where the file could not be written (True when the history is off or there was nothing to add)."""
        r = self.results
        assert r is not None
        first = r.get("bandwidth") or {}
        own = [{"at": first.get("at"), "read_best_gbps": run["kernels"]["read"]["best_gbps"],
                "array_bytes": first.get("array_bytes")}
               for run in first.get("runs", []) if run.get("check_ok", True) and run.get("kernels", {}).get("read")]
        own += [{"at": p.get("at"), "read_best_gbps": p["read_best_gbps"], "array_bytes": p.get("array_bytes")}
                for p in r.get("bandwidth_probes") or [] if p.get("check_ok", True) and p.get("read_best_gbps")]
        own = [p for p in own if p["at"] is not None]
        canary = contention.run_canary(r)
        return (history.history_path() is None or not (own or canary)
                or history.record(own, self.settings.threads, self.settings.cpus,
                                  first.get("engine") or bandwidth.engine_name(), command=" ".join(r.get("command") or []),
                                  canary=canary))

    def _open_reader(self) -> bandwidth.ReadProbe:
        """The read probes' array and workers (kept until run() ends)."""
        if self._reader is None:
            self._reader = bandwidth.ReadProbe(self.settings.threads, self.settings.cpus)
        return self._reader

    def _probe(self, when: str) -> float:
        """Probe the read bandwidth again (same threads and CPUs), keep it in results.json; bytes/s."""

        probe = self._open_reader().probe(BANDWIDTH_TRIALS)
        probe.update(when=when, at_seconds=time.perf_counter() - self._t_run, at=time.time())
        self.results["bandwidth_probes"].append(probe)
        self.save()
        return probe["read_best_gbps"] * 1e9 if probe["check_ok"] else 0.0

    def _compute_again(self, backend, c: dict, llc, label: str) -> None:
        """Measure a series' peak GFLOP/s once more (a layer ran faster); the best of both counts, both kept."""
        again = measure_ceilings(backend, c["dtype"], llc, TimingPolicy(budget_seconds=0.15, min_samples=3),
                                 self.settings.onnx_dir, block_size=self.settings.block_size, gemv=False)
        c["compute_again"] = {"after": label, "compute": again["compute"], "peak_gflops": again["peak_gflops"]}
        if again.get("peak_gflops"):
            c["peak_gflops"] = max(c["peak_gflops"], again["peak_gflops"])
        self.save()

    def _remeasure(self, point: dict, backend, w: Workload, llc, policy, progress, label: str,
                   max_copies: int | None = None) -> dict:
        """A point timed while other processes took the CPUs: measured once more; the quieter one is kept."""
        share = point["contention"]["other_share"] + point["contention"]["steal_share"]
        progress.note(f"{label}: other processes took {share:.0%} of the CPUs while it was timed: measuring again")
        waited = _wait_for_quiet(QUIET_WAIT_SECONDS)
        again = measure_point(backend, w, llc, policy, self.settings.cold, self.settings.onnx_dir, max_copies=max_copies)
        first = {"contention": point["contention"], "median_seconds": (point.get("timing") or {}).get("median_seconds"),
                 "waited_for_quiet_seconds": waited}
        if again.get("timing") and again.get("contention"):
            share2 = again["contention"]["other_share"] + again["contention"]["steal_share"]
            if share2 <= share or not again["contention"]["contended"]:
                point = again
        point["remeasured"] = first
        return point

    def _recheck_near_line(self, backends: dict, llc, t_start: float, progress: Progress, first: int = 0) -> None:
        """The headline rests on the fastest series' decode layers, and one near the kernel-limited line
        (roofline.near_line_points: kernel_share strictly between 0 and 1) moves the time by bound with its own
        noise: a ggml q4_0 GEMV timed 64.5 µs a call in one run and 52.9 in the next (each run steady within
        itself) moved a tenth of the decode between kernel-limited and compute-bound and turned "mixed" into
        "kernel-limited". Such points, the most time first (at most NEAR_LINE_RECHECKS), are measured once more at
        this later moment while their cost is spare; the faster is kept, both recorded (``near_line_recheck``)."""
        if self.near_line is not None:
            self._recheck_headline(self.near_line, NEAR_LINE_RECHECKS, "near_line_recheck", "kernel_share",
                                   "{:.0%} kernel-limited, near the line", backends, llc, t_start, progress, first)

    def _recheck_heavy(self, backends: dict, llc, t_start: float, progress: Progress, first: int = 0) -> None:
        """The headline's heaviest decode points (roofline.heavy_points: each a tenth or more of the fastest series'
        matmul time a token), not measured twice already, the most time first (at most HEAVY_RECHECKS): measured once
        more at this later moment while their cost is spare; the faster is kept, both recorded (``heavy_recheck``).
        A slow mode of the machine lasts seconds: one timing of the point that carries a third of a decode is one
        draw of it, and two timings far apart in the run fall in one mode less often (a phase of the DRAM bandwidth
        lasts minutes and moves both: see the README's bandwidth history)."""
        if self.heavy is not None:
            self._recheck_headline(self.heavy, HEAVY_RECHECKS, "heavy_recheck", "decode_share",
                                   "{:.0%} of the fastest series' matmul time", backends, llc, t_start, progress,
                                   first, once=True)

    def _recheck_series_heavy(self, backends: dict, llc, t_start: float, progress: Progress, first: int = 0) -> None:
        """Every series' heaviest decode points (roofline.series_heavy_points), not measured twice already, each
        series' heaviest first (at most SERIES_HEAVY_RECHECKS): measured once more with what the budget has left
        after the headline's rechecks, the faster kept, both recorded (``series_heavy_recheck``), as the headline's
        heaviest are (_recheck_heavy). Without it the decode of a series other than the headline rested on one draw
        of the machine's mode for each of its heaviest points."""
        if self.series_heavy is not None:
            self._recheck_headline(self.series_heavy, SERIES_HEAVY_RECHECKS, "series_heavy_recheck", "decode_share",
                                   "{:.0%} of its series' matmul time", backends, llc, t_start, progress, first,
                                   once=True, reserve=FINISH_RESERVE_SECONDS)

    def _recheck_headline(self, choose: Callable[[dict, LayerList], list[tuple[tuple, float]]], most: int,
                          record: str, field: str, why: str, backends: dict, llc, t_start: float, progress: Progress,
                          first: int, once: bool = False, reserve: float = HEADLINE_RESERVE_SECONDS) -> None:
        """Measure again the points ``choose`` picks (the headline's; every series' for _recheck_series_heavy), (point
        key, figure) each, in its order, at most ``most`` of them, while the budget less ``reserve`` has their cost;
        the faster kept, both medians and the figure recorded under ``record``. Only the points this process timed
        (from index ``first``: a resumed run keeps what it resumed as it was). ``once``: leave out the points measured
        again after the others already."""
        r = self.results
        assert r is not None
        index = {(p["backend"], p["dtype"], p["m"], p["k"], p["n"]): i for i, p in enumerate(r["measurements"])}
        chosen = [(key, x) for key, x in choose(r, self.layers) if index.get(key, -1) >= first and key[0] in backends
                  and not (once and any(r["measurements"][index[key]].get(y) for y in RECHECK_RECORDS[1:]))]
        for key, x in chosen[:most]:
            point = r["measurements"][index[key]]
            if not self._budget_has(point, t_start, reserve):
                break
            b, d, m, k, n = key
            t = point_seconds(point)
            assert t is not None
            progress.note(f"{b} {d} M={m} {k}x{n}: {why.format(x)}: measuring again")
            kept, t2 = self._again_as_before(point, backends, llc)
            kept[record] = {"median_seconds": t, "again_median_seconds": t2, field: x}
            r["measurements"][index[key]] = kept
            self.save_soon()

    def _compute_shapes(self, backend: str) -> tuple:
        """The peak-compute shapes of a series' ceilings: only the smallest for a backend measured decode-only
        by default (ggml in a default run: its budget stays small; M=1 layers sit far below the ridge point), all
        but the largest in a --quick run of decode alone (QUICK_COMPUTE_SHAPES)."""

        cls = backend_class(backend) if backend in BACKEND_NAMES else None
        if cls is not None and self.settings.backends is None and getattr(cls, "default_tokens", None):
            return COMPUTE_SHAPES[:1]
        if self.settings.quick and set(self.settings.tokens) == {1}:
            return COMPUTE_SHAPES[:QUICK_COMPUTE_SHAPES]
        return COMPUTE_SHAPES

    def _wanted(self, backend: str, dtype: str, m: int, k: int, n: int) -> bool:
        """Whether a layer point of a series is measured at all.

        A backend with ``default_tokens`` (ggml) measures only those token counts unless it was named in
        --backends (a default run keeps its budget small); a backend whose quantized series keep some kinds at
        its ``float_dtype`` (ggml) does not measure those kinds' shapes in the quantized format: the model-level
        figures take them from the float series (roofline.build_verdict)."""
        cls = backend_class(backend) if backend in BACKEND_NAMES else None
        if cls is None:
            return True
        if self.settings.backends is None and getattr(cls, "default_tokens", None) and m not in cls.default_tokens:
            return False
        if getattr(cls, "float_dtype", None) and dtype in cls.formats:

            kinds = quantize_kinds(self.settings.quantize, {"quantize_kinds": getattr(cls, "quantize_kinds", None)})
            return any(layer.kind in kinds for layer in self.layers.layers if layer.call_shape == (k, n))
        return True

    def _measure_nonmatmul(self, pairs, llc, quick: bool, progress) -> None:
        """One block's non-matmul decode work, timed in torch (nonmatmul.py), for the torch series."""

        r, profile = self.results, self.layers.profile
        if profile.version not in nonmatmul.VERSIONS:
            return
        have = {(x["backend"], x["dtype"]) for x in r.setdefault("nonmatmul", [])}
        wanted = {(b, nonmatmul.block_dtype(d, b)) for b, d in pairs
                  if b in nonmatmul.BACKENDS or b in nonmatmul.STAND_IN}

        graph = "ggml" in {b for b, _ in pairs} and ggml_block.supported(profile)  # its own graph (RWKV-7)
        if importlib.util.find_spec("torch") is None:  # no torch: no stand-in, the non-matmul part stays modelled
            wanted = {(b, d) for b, d in wanted if b not in nonmatmul.STAND_IN or (b == "ggml" and graph)}
        nonmatmul_budget = self.settings.nonmatmul_seconds or NONMATMUL_SECONDS[quick]
        for b, d in sorted(wanted - have):
            if b == "ggml" and graph:
                progress.stage("non-matmul block: ggml graph (fp32)")
                r["nonmatmul"].append(ggml_block.measure_series(profile, self.settings.threads, nonmatmul_budget,
                                                                llc, self.settings.cold))
                self.save()
                continue
            progress.stage(f"non-matmul block: {b} {d}" + (" (torch-timed stand-in)" if b in nonmatmul.STAND_IN else ""))
            kept: list = []  # its decode layer pass's rounds, for a later window (LATER_WINDOW)
            entry = nonmatmul.measure_series(profile, b, d, nonmatmul_budget, llc, self.settings.cold,
                                             threads=self.settings.threads, chunks=tuple(self.settings.tokens),
                                             keep=kept if self.settings.later_window else None)
            r["nonmatmul"].append(entry)
            self._windows += [(entry, rounds) for rounds in kept]
            self.save()

    def _later_windows_seconds(self) -> float:
        """What the kept layer passes' later windows are expected to cost (the points leave it to them)."""
        return sum(layerpass.later_window_seconds(rounds) for _, rounds in self._windows)

    def _measure_later_windows(self, t_start: float, progress: Progress) -> None:
        """The torch series' decode layer passes, a second window of rounds each (layerpass.later_window), seconds
        after the first (before the layer points whose weights outweigh their rings, or after the points), while the
        budget has its cost; their entries re-split over both windows. The rounds' rings go either way. The points
        leave the windows' cost aside, but can overrun it by a little (two --quick runs of rwkv-0b4 in four ended their
        points 0.09-0.11 s into the finish reserve): like the headline's rechecks, the windows may use what the finish
        reserve keeps beyond HEADLINE_RESERVE_SECONDS."""
        while self._windows:
            entry, rounds = self._windows.pop(0)
            left, need = self._budget_left(t_start, HEADLINE_RESERVE_SECONDS), layerpass.later_window_seconds(rounds)
            if left < need:
                entry["later_window_skipped"] = f"{left:.2f} s of the budget left, the window needs about {need:.2f} s"
                continue
            progress.stage(f"non-matmul block again: {entry['backend']} {entry['dtype']}")
            entry.update(layerpass.later_window(rounds))
            self.save()
        system.release_free_memory()

    def _time_block_again(self, llc, t_start: float, progress: Progress) -> None:
        """The ggml series' block graph (ggml_block), timed before the layer points, timed once more (halfway through
        the points, and after them: at most BLOCK_WINDOWS timings in all) while the budget less
        HEADLINE_RESERVE_SECONDS has what its first timing took: the fastest kept, each recorded (``windows``: seconds
        a block of each). The graph's calls run in two modes, 85-95 or 130-140 µs a block of rwkv-0b4 on the dev VM,
        a mode holding for seconds to minutes and switching within a process (on the same blocks, with or without
        other work between): the machine's slow phases of two-thread work, as the canary sees them (its own two
        modes, 83-88 and 125-150 µs). Timed once, one quick run's ggml series had 2.2 ms of it a token and the next
        run's 3.2 (a twentieth of a q4_0 decode); the layer points meet the same phases with their rechecks."""
        r = self.results
        assert r is not None
        for entry in r.get("nonmatmul") or []:
            if (entry.get("engine") != "ggml" or not entry.get("seconds_per_block")
                    or len(entry.get("windows") or [None]) >= BLOCK_WINDOWS or entry.get("later_window_skipped")):
                continue
            need = entry.get("elapsed_seconds") or 1.0
            left = self._budget_left(t_start, HEADLINE_RESERVE_SECONDS)
            if left < need:
                entry["later_window_skipped"] = f"{left:.2f} s of the budget left, the block needs about {need:.2f} s"
                continue
            progress.stage("non-matmul block again: ggml graph (fp32)")
            s = self.settings
            again = ggml_block.measure_series(self.layers.profile, s.threads,
                                              s.nonmatmul_seconds or NONMATMUL_SECONDS[s.quick], llc, s.cold)
            best, this = entry["seconds_per_block"], again.get("seconds_per_block")
            entry["windows"] = (entry.get("windows") or [best]) + [this]
            if this is not None and this < best:
                entry.update({key: again[key] for key in ("seconds_per_block", "seconds_per_token", "timing")})
            self.save()

    def _measure_block_graphs(self, pairs, llc, quick: bool, progress) -> None:
        """Whole-block ONNX graphs (onnxblock.py) timed in onnxruntime, for its fp32/fp16 series (RWKV-7)."""

        r, profile = self.results, self.layers.profile
        if profile.version not in onnxblock.VERSIONS or profile.n_layer < 2:
            return
        have = {(x["backend"], x["dtype"]) for x in r.setdefault("block_graphs", [])}
        # --quick: fp32 only (one graph of one later block); the default run times every dtype and graph
        dtypes = ("fp32",) if quick else onnxblock.DTYPES
        wanted = sorted({(b, d) for b, d in pairs if b == onnxblock.BACKEND and d in dtypes} - have)
        folder = Path(self.settings.onnx_dir) / "blocks" / hashlib.sha256(
            onnxblock.settings_key(profile, 0).encode()).hexdigest()[:12]
        for b, d in wanted:
            progress.stage(f"block graphs: {b} {d}")
            policy = TimingPolicy(budget_seconds=0.8 if quick else 2.0, min_samples=5)
            # --quick: one later block (the graph n_layer - 1 blocks run; a few seconds even for 1.5B); otherwise
            # block 0, the head (the chained decode step) and the full-model graph too
            kinds = ("block",) if quick else onnxblock.KINDS
            r["block_graphs"].append(onnxblock.measure_graphs(profile, folder, d, self.settings.threads, policy, llc,
                                                              self.settings.cold, kinds))
            self.save()

    def _write_models(self, points) -> None:
        """The ONNX models onnxruntime will run (reused from the cache folder when already there)."""

        # quantized models are made by the backend from the fp32 one
        need = sorted({(m, k, n, d if d in onnxgen.ONNX_DTYPES else "fp32") for m, k, n, b, d in points
                       if b == "onnxruntime"})
        folder = ensure_writable_dir(self.settings.onnx_dir)
        for m, k, n, d in need:
            spec = onnxgen.ModelSpec(m, k, n, d)
            if not has_float_model(spec, folder):
                onnxgen.check_resources([spec], folder)
                float_model(spec, folder)


def _reads_base_weight(backend: str, dtype: str) -> bool:
    """Backend.reads_base_weight for a series by name (a backend rwkvprobe does not know of: assumed to)."""
    return backend not in BACKEND_NAMES or backend_class(backend).reads_base_weight(dtype)


def _next_point(queue: collections.deque, points: list[tuple]) -> int:
    """The next point of ``queue`` (plan indices) to time, taken from it: the first; but where that would free or
    replace a base weight kept now that cost REGENERATE_SECONDS or more to generate, while points that read it wait
    further on (put off while the machine ran slow), the first of those. Put off to the end of a quick rwkv-1b5 run,
    the numpy head generated its 0.5 GB fp32 weight again after the others (3.5-5.7 s of a 45 s run on huge pages,
    before small_pages; 0.6-1.0 s on small ones)."""
    kept = base_weight.kept()
    if kept and base_weight.seconds(*kept) >= REGENERATE_SECONDS and not _reads_kept(points[queue[0]], kept):
        waiting = next((j for j in queue if _reads_kept(points[j], kept)), None)
        if waiting is not None:
            queue.remove(waiting)
            return waiting
    return queue.popleft()


def _reads_kept(point: tuple, kept: tuple[int, int]) -> bool:
    """Whether a planned point (m, k, n, backend, dtype) reads the base weight of shape ``kept``."""
    _, k, n, b, d = point
    return (k, n) == kept and _reads_base_weight(b, d)


def _slow_machine_warning(results: dict) -> list[str]:
    """A warning where most of the run was timed while the machine ran slow against its earlier runs
    (contention.machine_speed): two quick runs of rwkv-0b4 on the dev VM, one with every point beside a fast canary
    and one with 77% of them beside a slow one (1.6x), read every two-thread series 4-19% apart."""
    speed = contention.machine_speed(results)
    if not speed or speed["ratio"] < contention.CANARY_SLOW:
        return []
    return [f"Most of this run was timed while the machine ran slow: a fixed two-thread matmul timed beside each point "
            f"(the canary) had a median of {speed['median_seconds'] * 1e6:.0f} µs, {speed['ratio']:.2f}x its best on "
            f"this machine ({speed['best_seconds'] * 1e6:.0f} µs, over {speed['earlier_runs']} earlier run(s) of the "
            "last days). Its layer times may read slower than the machine's best by up to that much (a shared host "
            "runs two-thread work slowly in phases lasting seconds to minutes); compare it with other runs with this "
            "in mind, or run again."]


def _wait_for_quiet(limit: float, step: float = 0.25) -> float:
    """Wait (at most ``limit`` seconds) until a ``step`` window passes with the machine not contended;
    returns the seconds waited. Used before measuring a contended point again."""

    start = time.monotonic()
    while time.monotonic() - start < limit:
        a = contention.sample()
        time.sleep(step)
        if not contention.between(a, contention.sample())["contended"]:
            break
    return time.monotonic() - start


def _hold_for_test() -> None:  # pragma: no cover - exercised by the interrupt test in a subprocess
    """Tests only (HOLD_ENV): wait here until the test interrupts the run; HOLD_MARK_ENV names a file made once the
    run waits here, so that the interrupt lands in this wait (a CI run once hung 120 s after an interrupt sent as the
    results file showed the points, a moment before the run reached the wait)."""
    mark = os.environ.get(HOLD_MARK_ENV)
    if mark:
        Path(mark).touch()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.05)


