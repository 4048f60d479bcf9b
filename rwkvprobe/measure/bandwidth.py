"""STREAM-style memory bandwidth probe: copy, scale, add, triad and a read-only kernel.

One persistent Python thread per requested thread, each pinned to one CPU and owning one contiguous
chunk of the three arrays (first-touched by that thread). The workers start each kernel together at a
barrier; a trial lasts from the first worker's start to the last worker's finish.

Two kernel engines, chosen at run time (``engine_name()``):

- ``numba`` (default when numba imports): each kernel is one compiled, fused loop
  (:mod:`rwkvprobe.measure.stream_kernels`) that releases the GIL, like the C reference's OpenMP loops. This is
  the engine that reaches the C reference on every CPU tried, AVX2-only ones included.
- ``numpy-threads`` (fallback, or ``RWKVPROBE_STREAM_ENGINE=numpy``): numpy ufuncs with ``out=``, which
  also release the GIL:

- copy ``c = a`` is ``np.positive(a, out=c)`` (a SIMD ufunc loop; ``np.copyto``'s memmove was slower).
- triad ``a = b + s*c`` has no single numpy call, and two whole-array passes would move 5 arrays.
  It runs in blocks of about one L2 cache: ``a[blk] = s*c[blk]; a[blk] += b[blk]``, with ``a[blk]``
  staying in cache, so memory sees the 3 arrays STREAM counts. Two passes per block still cost a
  single core some speed against a fused C loop (see bench/README.md).
- read is ``np.dot(a, a)`` (one array read, multiply-accumulate as in a GEMV), with BLAS held to one
  thread per caller. The numba engine takes its compiled loop, this dot and a compiled loop reading four parts of
  the array side by side in turn (``READ_METHODS``).

The numba engine runs every kernel by two or three methods in turn, one a call (``kernel_methods``): copy, scale,
add and triad as the plain loop and as the loop that prefetches 2 KiB ahead (see stream_kernels), read as above. A
kernel's best trial is the best of its methods, as STREAM's best trial is; each method's best is kept
(``best_gbps_by_method``).

Bytes are counted STREAM's way (no write-allocate traffic): copy and scale 2 arrays, add and triad 3,
read 1, of ``elements * 8`` bytes each. GB/s = 1e9 bytes/s. ``bench/bandwidth_vs_c.py`` compares this
probe with a compiled C/OpenMP reference (``bench/stream_ref.c``) on the same machine.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import threading
import time
from typing import Callable, Optional

import numpy as np

from rwkvprobe.errors import InputError
from rwkvprobe.measure import cachesize, stream_kernels, system

KERNELS = ("copy", "scale", "add", "triad", "read")
ARRAYS_MOVED = {"copy": 2, "scale": 2, "add": 3, "triad": 3, "read": 1}
ITEM_BYTES = 8  # float64
SCALAR = 3.0  # STREAM's scalar
ENGINE = "numpy-threads"  # the fallback engine's name (see engine_name())
ENGINES = ("numba", "numpy-threads")
DEFAULT_LLC_BYTES = 32 * 2**20  # when the last-level cache size is unknown
LLC_MULTIPLE = 4  # STREAM's rule: each array at least 4x the last-level cache
DEFAULT_TRIALS = 10
MAX_TRIALS = 100  # values grow 15x per trial at most; 100 trials stay finite in float64
MEMORY_FRACTION = 0.8  # the arrays may use at most this share of the available memory
WARMUP_TRIALS = 1  # untimed passes after first touch (page faults, caches, thread start-up)
ARRAY_ALIGN_BYTES = 2 * 2**20  # huge-page aligned, like the C reference
CHUNK_ALIGN_ELEMENTS = 512  # worker chunks start on 4 KiB page boundaries
TRIAD_BLOCK_MIN, TRIAD_BLOCK_MAX = 2**14, 2**18  # elements (128 KiB .. 2 MiB)
#: the numba engine's read, in turn a trial each (the first after the warm-up is the compiled loop): on one core of
#: the Zen 4 dev VM the compiled loop read 28-30 GB/s where BLAS's dot (np.dot, OpenBLAS ddot) and the C reference
#: read 31-34 (0.90 of C for the loop alone); at two cores both reach C. The best trial of either counts, as
#: STREAM's best trial does; each method's best is kept (``best_gbps_by_method``). (The loop's shortfall was its
#: 512-bit vectors: with 256-bit ones, see stream_kernels, it reads as fast as the dot there; both stay, as a check
#: on each other.) The third, four streams (stream_kernels.read_streams): on one core of the AVX2 Zen 3 VM a single
#: sequential stream read 21.7-22.1 GB/s (median of 10 trials), four parts of the array read side by side, as a
#: GEMV reads several rows at once, 23.7-25.4, on 128 MB and 768 MB arrays alike (not the cache); two cores 2-13% more.
#: Where a layer's GEMV read faster than the single stream, the ceiling was the probe's, not the memory's.
READ_METHODS = ("compiled loop", "BLAS dot", "four streams")
#: the numba engine's copy, scale, add and triad, in turn a call (the first the plain loop): on one core of the AVX2
#: Zen 3 VM the plain loop's scale moved 0.82-0.87 of C's, the prefetching one C's speed (see stream_kernels)
WRITE_METHODS = ("compiled loop", "prefetching loop")

_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
               "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "b": 1}

Progress = Optional[Callable[[str], None]]


def _numba_kernels():
    """The compiled kernels, or None when numba cannot be imported here (stream_kernels.compiled)."""
    return stream_kernels.compiled()


def engine_name(requested: str | None = None) -> str:
    """The kernel engine to use: ``numba`` when it imports, else ``numpy-threads``.

    ``requested`` (or the RWKVPROBE_STREAM_ENGINE environment variable: ``numba`` or ``numpy``) forces
    one; asking for numba where it cannot be imported is an InputError naming the package to install.
    """
    want = (requested or os.environ.get("RWKVPROBE_STREAM_ENGINE") or "auto").strip().lower()
    if want in ("numpy", "numpy-threads"):
        return ENGINE
    if want not in ("auto", "numba"):
        raise InputError(f"bandwidth engine {want!r}: expected numba or numpy")
    if _numba_kernels() is not None:
        return "numba"
    if want == "numba":
        raise InputError("bandwidth engine numba: numba is not installed here (pip install numba)")
    return ENGINE


# ------------------------------------------------------------------------------------------------
# Sizes, byte accounting and the reference values


def kernel_bytes(kernel: str, elements: int) -> int:
    """Bytes one pass of ``kernel`` moves over arrays of ``elements`` float64, counted as STREAM does."""
    return ARRAYS_MOVED[kernel] * elements * ITEM_BYTES


def parse_size(text: str, option: str = "--size") -> int:
    """'64M' -> 67108864. K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024; kB/MB/GB/TB powers of 1000."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text or "")
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise InputError(f"{option} {text!r}: expected bytes per array, e.g. 128M, 1G or 4000000")
    value = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if value < ITEM_BYTES:
        raise InputError(f"{option} {text!r}: expected at least {ITEM_BYTES} bytes (one float64) per array")
    return value


def default_array_bytes(llc_bytes: int | None) -> int:
    """STREAM's rule: each array at least 4x the last-level cache (32 MiB assumed when unknown)."""
    return LLC_MULTIPLE * (llc_bytes or DEFAULT_LLC_BYTES)


def check_memory(array_bytes: int, available_bytes: int | None = None, arrays: int = 3) -> None:
    """InputError when ``arrays`` arrays of ``array_bytes`` would not fit in the available memory."""
    if available_bytes is None:
        import psutil

        available_bytes = psutil.virtual_memory().available
    need = arrays * array_bytes
    if need > MEMORY_FRACTION * available_bytes:
        count = {1: "one array needs", 3: "three arrays need"}.get(arrays, f"{arrays} arrays need")
        raise InputError(f"array size {array_bytes / 1e9:.3g} GB: {count} {need / 1e9:.3g} GB, but only "
                         f"{available_bytes / 1e9:.3g} GB of memory is available (use a smaller --size)")


def reference_step(kernel: str, a, b, c):
    """One kernel applied to (a, b, c), floats or numpy arrays: the values the probe must produce.

    Returns (a, b, c, read_value). read_value is None except for "read": ``dot(a, a)`` for arrays,
    ``a * a`` (one element's share) for floats.
    """
    if kernel == "copy":
        c = a
    elif kernel == "scale":
        b = SCALAR * c
    elif kernel == "add":
        c = a + b
    elif kernel == "triad":
        a = b + SCALAR * c
    elif kernel == "read":
        return a, b, c, np.dot(a, a) if isinstance(a, np.ndarray) else a * a
    return a, b, c, None


# ------------------------------------------------------------------------------------------------
# Which CPUs and thread counts to run


def usable_cpus() -> list[int]:
    """Online CPUs this process may run on."""
    online = system.online_cpus()
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        return online
    return [c for c in online if c in allowed] or sorted(allowed)


def _cluster_of(cpus: list[int], clusters: list[dict]) -> str:
    for cluster in clusters:
        if set(cpus) <= set(cluster["cpus"]):
            return cluster["name"]
    return "mixed"


def plan_runs(threads: list[int] | None = None, cpus: list[int] | None = None,
              clusters: list[dict] | None = None, usable: list[int] | None = None) -> list[dict]:
    """The runs to measure: [{"threads": n, "cpus": [pinned CPU of each worker], "cluster": name}].

    Without ``cpus``: each CPU cluster on its own (big.LITTLE), then all CPUs together for the
    thread counts no single cluster can hold. Default thread counts: 1 and every CPU of the group.
    """
    usable = usable if usable is not None else usable_cpus()
    clusters = clusters if clusters is not None else system.cpu_clusters()
    limit = len(cpus) if cpus else len(usable)
    for n in threads or []:
        if n < 1:
            raise InputError(f"--threads {n}: expected a positive number of threads")
        if n > limit:
            where = f"--cpus gives {limit} CPU(s)" if cpus else f"this machine has {limit} usable online CPU(s)"
            raise InputError(f"--threads {n}: at most one thread per CPU and {where}")
    if cpus:
        missing = sorted(set(cpus) - set(usable))
        if missing:
            raise InputError(f"--cpus: CPU {missing[0]} is not online or not allowed for this process "
                             f"(usable: {','.join(map(str, usable))})")
        groups = [(_cluster_of(cpus, clusters), list(cpus), threads or sorted({1, len(cpus)}))]
    else:
        groups = []
        sets = [[c for c in cl["cpus"] if c in usable] for cl in clusters]
        sets = [s for s in sets if s]
        if len(sets) > 1:  # big.LITTLE: each cluster, then the whole machine (fastest CPUs first)
            biggest = max(len(s) for s in sets)
            for cl, members in zip(clusters, sets):
                counts = threads or sorted({1, len(members)})
                groups.append((cl["name"], members, [n for n in counts if n <= len(members)]))
            ordered = [c for s in sets for c in s]
            counts = [n for n in threads if n > biggest] if threads else [len(ordered)]
            groups.append(("all", ordered, counts))
        else:
            members = sets[0] if sets else usable
            groups.append((_cluster_of(members, clusters), members, threads or sorted({1, len(members)})))
    return [{"threads": n, "cpus": members[:n], "cluster": name}
            for name, members, counts in groups for n in counts]


# ------------------------------------------------------------------------------------------------
# The worker team


def _aligned_empty(elements: int, align: int = ARRAY_ALIGN_BYTES) -> np.ndarray:
    """An uninitialised float64 array whose data starts on an ``align``-byte boundary (pages untouched)."""
    raw = np.empty(elements * ITEM_BYTES + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + elements * ITEM_BYTES].view(np.float64)


def split_chunks(elements: int, parts: int, align: int = CHUNK_ALIGN_ELEMENTS) -> list[tuple[int, int]]:
    """Contiguous [start, stop) chunks, one per worker, starting on ``align``-element boundaries."""
    if elements < parts * align:
        align = 1
    edges = [i * elements // parts // align * align for i in range(parts)] + [elements]
    return list(zip(edges[:-1], edges[1:]))


def triad_block_elements(cpu: int | None, threads: int = 1) -> int:
    """Triad block length: one L2 cache of ``cpu``, at most a quarter of the LLC shared by all threads.

    Clamped to 128 KiB .. 2 MiB: smaller blocks cost more in Python call overhead than they save.
    """
    found = {c["level"]: c["bytes"] for c in system.caches(cpu=cpu or 0) if c["type"] != "Instruction"}
    l2 = found.get(2, 2**20)
    llc = max(found.values()) if found else DEFAULT_LLC_BYTES
    elements = min(l2, llc // (4 * threads)) // ITEM_BYTES
    return min(max(elements, TRIAD_BLOCK_MIN), TRIAD_BLOCK_MAX)


class _Chunk:
    """One worker's slices of a, b, c, and their triad blocks."""

    def __init__(self, a: np.ndarray, b: np.ndarray, c: np.ndarray, start: int, stop: int, block: int,
                 kernels=None):
        self.kernels = kernels  # the compiled kernels (numba engine), or None for numpy ufuncs
        self.calls = dict.fromkeys(KERNELS, 0)  # calls so far per kernel (the numba engine's methods take turns)
        self.a, self.b, self.c = a[start:stop], b[start:stop], c[start:stop]
        n = stop - start
        self.scalar = np.array(SCALAR)  # a 0-d array: numpy converts it faster than a float, per call
        self.blocks = [(self.a[i:i + block], self.b[i:i + block], self.c[i:i + block]) for i in range(0, n, block)]

    def fill(self) -> None:
        """STREAM's start values, written by the owning thread (first touch places its pages)."""
        self.a.fill(1.0)
        self.b.fill(2.0)
        self.c.fill(0.0)

    def run(self, kernel: str) -> float | None:
        k = self.kernels
        if k is not None:  # the kernel's methods in turn, one a call (kernel_methods)
            turn = self.calls[kernel] % len(kernel_methods(kernel, k))
            second = turn == 1
            self.calls[kernel] += 1
            if kernel == "read":
                return float(k.read_streams(self.a) if turn == 2 else np.dot(self.a, self.a) if second
                             else k.read(self.a))
            if kernel == "copy":
                (k.copy_ahead if second else k.copy)(self.a, self.c)
            elif kernel == "scale":
                (k.scale_ahead if second else k.scale)(self.c, self.b, SCALAR)
            elif kernel == "add":
                (k.add_ahead if second else k.add)(self.a, self.b, self.c)
            elif kernel == "triad":
                (k.triad_ahead if second else k.triad)(self.a, self.b, self.c, SCALAR)
            return None
        if kernel == "copy":
            np.positive(self.a, out=self.c)
        elif kernel == "scale":
            np.multiply(self.c, self.scalar, out=self.b)
        elif kernel == "add":
            np.add(self.a, self.b, out=self.c)
        elif kernel == "triad":
            multiply, add, scalar = np.multiply, np.add, self.scalar
            for a, b, c in self.blocks:
                multiply(c, scalar, out=a)  # a's block stays in cache for the add
                add(a, b, out=a)
        elif kernel == "read":
            return float(np.dot(self.a, self.a))
        return None


class StreamTeam:
    """Three float64 arrays (``read_only``: the read kernel's array a alone, b and c empty) and one persistent
    worker thread per entry of ``cpus`` (pinned unless None).

    Worker i owns chunk i of every array and first-touches it. ``run(kernel)`` runs one kernel on all
    workers at once and returns its seconds; ``workers`` says what each worker did. Use it as a
    context manager (or call ``close()``): closing stops the threads and frees the arrays.
    """

    def __init__(self, elements: int, cpus: list[int | None], triad_block: int | None = None,
                 engine: str | None = None, read_only: bool = False):
        if elements < len(cpus):
            raise InputError(f"{elements} elements per array cannot be split over {len(cpus)} threads")
        n = len(cpus)
        self.elements = elements
        self.cpus = list(cpus)
        self.read_only = read_only  # array a only (the read kernel's): b and c are empty
        self.triad_block = triad_block or triad_block_elements(self.cpus[0], n)
        self.engine = engine_name(engine)
        self._kernels = _numba_kernels() if self.engine == "numba" else None
        if self._kernels is not None:  # compile (or load from the disk cache) before the workers time anything
            self._warm_compile()
        self.a, self.b, self.c = (_aligned_empty(0 if read_only and i else elements) for i in range(3))
        self.chunks = split_chunks(elements, n)
        self.workers = [{"cpu": cpu, "first_element": lo, "elements": hi - lo, "calls": 0}
                        for cpu, (lo, hi) in zip(self.cpus, self.chunks)]
        self.read_value: float | None = None
        self.calls = dict.fromkeys(KERNELS, 0)  # run() calls per kernel (the numba engine's methods take turns)
        self._start = threading.Barrier(n + 1)  # the workers and this thread
        self._done = threading.Barrier(n + 1)
        self._job: str | None = None
        self._stamps = [(0.0, 0.0)] * n
        self._results: list[float | None] = [None] * n
        self._errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"stream-{i}", daemon=True)
                         for i in range(n)]
        for t in self._threads:
            t.start()
        try:
            self._dispatch("fill")
        except BaseException:
            self.close()
            raise

    def _work(self, index: int) -> None:
        chunk = None
        try:
            if self.cpus[index] is not None:
                os.sched_setaffinity(0, {self.cpus[index]})  # on Linux, 0 is the calling thread
            self.workers[index]["affinity"] = sorted(os.sched_getaffinity(0))
            lo, hi = self.chunks[index]
            chunk = _Chunk(self.a, self.b, self.c, lo, hi, self.triad_block, self._kernels)
        except BaseException as e:  # raised in the main thread by the first dispatch
            self._errors.append(e)
        try:
            while True:
                self._start.wait()
                job = self._job
                if job is None:
                    return
                if chunk is not None:
                    try:
                        t0 = time.perf_counter()
                        self._results[index] = chunk.fill() if job == "fill" else chunk.run(job)
                        self._stamps[index] = (t0, time.perf_counter())
                        self.workers[index]["calls"] += job != "fill"
                    except BaseException as e:
                        self._errors.append(e)
                self._done.wait()
        except threading.BrokenBarrierError:  # the main thread gave up (error or interrupt)
            return

    def _dispatch(self, job: str | None) -> float:
        """Hand ``job`` to every worker and wait for all; seconds from the first start to the last finish."""
        self._job = job
        try:
            self._start.wait()
            if job is None:
                return 0.0
            self._done.wait()
        except BaseException:
            self._start.abort()
            self._done.abort()
            raise
        if self._errors:
            raise RuntimeError(f"bandwidth worker failed: {self._errors[0]!r}") from self._errors[0]
        return max(t1 for _, t1 in self._stamps) - min(t0 for t0, _ in self._stamps)

    def _warm_compile(self) -> None:
        tiny = [np.ones(8), np.ones(8), np.zeros(8)]
        k = self._kernels
        if k is None:  # the numpy engine: nothing to compile
            return
        k.copy(tiny[0], tiny[2])
        k.scale(tiny[2], tiny[1], SCALAR)
        k.add(tiny[0], tiny[1], tiny[2])
        k.triad(tiny[0], tiny[1], tiny[2], SCALAR)
        k.read(tiny[0])
        k.read_streams(tiny[0])
        # the prefetching twins need nothing here: stream_kernels.compiled() ran each on float64 arrays before keeping it

    def run(self, kernel: str) -> float:
        """Run ``kernel`` on every worker at once; seconds from the first start to the last finish."""
        if self.read_only and kernel != "read":
            raise ValueError(f"a read-only team has no arrays for the {kernel} kernel")
        seconds = self._dispatch(kernel)
        self.calls[kernel] += 1
        if kernel == "read":
            self.read_value = sum(self._results)
        return seconds

    def close(self) -> None:
        if self._threads:
            try:
                self._dispatch(None)
            except threading.BrokenBarrierError:
                pass
            for t in self._threads:
                t.join()
            self._threads = []
        self.a = self.b = self.c = None  # type: ignore[assignment]  # free the arrays now

    def __enter__(self) -> "StreamTeam":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------
# Measuring


def summarize(kernel: str, elements: int, seconds: list[float]) -> dict:
    """Per-kernel statistics as STREAM prints them: best rate, average rate, min and max time."""
    nbytes = kernel_bytes(kernel, elements)
    best, avg = min(seconds), sum(seconds) / len(seconds)
    return {"bytes_per_trial": nbytes, "seconds": seconds, "best_gbps": nbytes / best / 1e9,
            "avg_gbps": nbytes / avg / 1e9, "min_seconds": best, "max_seconds": max(seconds)}


def _check(team: StreamTeam, kernels: tuple[str, ...], passes: int) -> bool:
    """Do the arrays hold the values of the scalar model after ``passes`` passes of ``kernels``?"""
    a, b, c, read = 1.0, 2.0, 0.0, None
    for _ in range(passes):
        for k in kernels:
            a, b, c, value = reference_step(k, a, b, c)
            read = value if value is not None else read
    ok = all(math.isclose(float(arr.min()), want, rel_tol=1e-12) and math.isclose(float(arr.max()), want, rel_tol=1e-12)
             for arr, want in ((team.a, a), (team.b, b), (team.c, c)) if arr.size)
    if read is not None:
        ok = ok and team.read_value is not None and math.isclose(team.read_value, read * team.elements, rel_tol=1e-9)
    return ok


def measure_run(elements: int, cpus: list[int | None], trials: int, kernels: tuple[str, ...],
                engine: str | None = None) -> dict:
    """One thread count on one CPU set: every trial's seconds per kernel, plus what each worker did."""
    with StreamTeam(elements, cpus, engine=engine) as team:
        return _trials(team, trials, kernels)


def _trials(team: StreamTeam, trials: int, kernels: tuple[str, ...]) -> dict:
    """WARMUP_TRIALS untimed passes, then ``trials`` timed ones, of ``kernels`` on ``team``; the values checked."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        calls_before = dict(team.calls)  # a kept team's earlier probes' calls (the methods take turns from the first)
        for _ in range(WARMUP_TRIALS):
            for k in kernels:
                team.run(k)
        seconds: dict[str, list[float]] = {k: [] for k in kernels}
        for _ in range(trials):
            for k in kernels:
                seconds[k].append(team.run(k))
        check_ok = _check(team, kernels, WARMUP_TRIALS + trials)
        summaries = {k: summarize(k, team.elements, s) for k, s in seconds.items()}
        if team.engine == "numba":
            for k, summary in summaries.items():
                summary["best_gbps_by_method"] = by_method(summary, kernel_methods(k, team._kernels),
                                                           calls_before[k] + WARMUP_TRIALS)
        return {"kernels": summaries, "check_ok": check_ok,
                "triad_block_elements": team.triad_block, "workers": team.workers, "engine": team.engine}


def kernel_methods(kernel: str, kernels) -> tuple[str, ...]:
    """The numba engine's methods for ``kernel``, in the order its calls take them: READ_METHODS for read,
    WRITE_METHODS for the others where their prefetching twin compiled (``kernels``: stream_kernels.compiled()),
    else the plain loop alone."""
    if kernel == "read":
        return READ_METHODS if hasattr(kernels, "read_streams") else READ_METHODS[:2]
    return WRITE_METHODS if hasattr(kernels, f"{kernel}_ahead") else WRITE_METHODS[:1]


def by_method(summary: dict, methods: tuple[str, ...], warmup_calls: int) -> dict[str, float]:
    """The best GB/s per method of ``methods`` (taken in turn from a kernel's first call), from a kernel's summary
    whose trials came after ``warmup_calls`` untimed calls."""
    best: dict[str, float] = {}
    for i, t in enumerate(summary["seconds"], start=warmup_calls):
        name = methods[i % len(methods)]
        best[name] = max(best.get(name, 0.0), summary["bytes_per_trial"] / t / 1e9)
    return best


def cpu_text(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def measure_bandwidth(array_bytes: int | None = None, threads: list[int] | None = None, trials: int = DEFAULT_TRIALS,
                      cpus: list[int] | None = None, kernels=KERNELS, progress: Progress = None,
                      engine: str | None = None) -> dict:
    """Measure STREAM bandwidth for each thread count (and each CPU cluster); a JSON-ready dict.

    ``array_bytes``: bytes per array (default 4x the last-level cache); ``threads``: thread counts
    (default 1 and all CPUs); ``cpus``: pin to these CPUs (default: each cluster, see ``plan_runs``);
    ``engine``: ``numba`` or ``numpy`` (default: see ``engine_name``).
    """
    kernels = tuple(kernels)
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown or not kernels:
        raise InputError(f"kernels {list(kernels)}: expected some of {', '.join(KERNELS)}")
    if not 1 <= trials <= MAX_TRIALS:
        raise InputError(f"--trials {trials}: expected 1 to {MAX_TRIALS}")
    llc = cachesize.usable_llc_bytes()
    if array_bytes is None:
        array_bytes = default_array_bytes(llc)
    if array_bytes < ITEM_BYTES:
        raise InputError(f"array size {array_bytes} bytes: expected at least {ITEM_BYTES} (one float64)")
    elements = array_bytes // ITEM_BYTES
    runs = plan_runs(threads, cpus)
    if elements < max(r["threads"] for r in runs):
        raise InputError(f"array size {array_bytes} bytes: fewer float64 elements than threads")
    check_memory(elements * ITEM_BYTES)
    engine = engine_name(engine)

    say = progress or (lambda message: None)
    began = time.perf_counter()
    results = []
    for r in runs:
        say(f"bandwidth: {r['threads']} thread(s) on CPU {cpu_text(r['cpus'])} ({r['cluster']}), "
            f"3 arrays x {elements * ITEM_BYTES / 1e6:.0f} MB, {trials} trials")
        measured = measure_run(elements, r["cpus"], trials, kernels, engine)
        results.append({**r, **measured})
        say("  " + ", ".join(f"{k} {v['best_gbps']:.1f}" for k, v in measured["kernels"].items()) + " GB/s (best)"
            + ("" if measured["check_ok"] else "  WARNING: wrong values in the arrays"))
    return {"array_bytes": elements * ITEM_BYTES, "elements": elements, "llc_bytes": llc, "cache": cachesize.decide(),
            "trials": trials,
            "warmup_trials": WARMUP_TRIALS, "engine": engine,
            **({"engine_tuning": stream_kernels.vector_tuning()} if engine == "numba" else {}), "scalar": SCALAR,
            "byte_counting": "STREAM: copy/scale 2 arrays, add/triad 3, read 1; no write-allocate; GB = 1e9 bytes",
            "total_seconds": time.perf_counter() - began, "runs": results}


class ReadProbe:
    """Short re-probes of the read kernel (what analyze's verdict uses as W), on one array and one team of workers
    kept between probes: the array (4x the last-level cache, STREAM's rule) is allocated and first-touched once.

    A fresh team per probe spent 0.04-1.7 s first-touching its arrays in a quick analyze run on the dev VM (fresh
    pages from the hypervisor), where the ten read trials take about 0.05 s. Use it as a context manager (or call
    ``close()``). Same threads and CPUs as ``measure_bandwidth`` would take, best of ``trials``, values checked.
    """

    def __init__(self, threads: int, cpus: list[int] | None = None, engine: str | None = None):
        llc = cachesize.usable_llc_bytes()
        elements = default_array_bytes(llc) // ITEM_BYTES
        self.run_plan = plan_runs([threads], cpus)[0]
        check_memory(elements * ITEM_BYTES, arrays=1)
        self.team = StreamTeam(elements, self.run_plan["cpus"], engine=engine, read_only=True)

    def probe(self, trials: int = DEFAULT_TRIALS) -> dict:
        """One probe: a compact dict (read GB/s best and average, every trial's seconds, the check)."""
        if not 1 <= trials <= MAX_TRIALS:
            raise InputError(f"--trials {trials}: expected 1 to {MAX_TRIALS}")
        run = _trials(self.team, trials, ("read",))
        read = run["kernels"]["read"]
        return {"read_best_gbps": read["best_gbps"], "read_avg_gbps": read["avg_gbps"], "seconds": read["seconds"],
                "threads": self.run_plan["threads"], "cpus": self.run_plan["cpus"], "trials": trials,
                "check_ok": run["check_ok"], "engine": self.team.engine,
                "array_bytes": self.team.elements * ITEM_BYTES}

    def close(self) -> None:
        self.team.close()

    def __enter__(self) -> "ReadProbe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def probe_read(threads: int, cpus: list[int] | None = None, trials: int = DEFAULT_TRIALS,
               engine: str | None = None) -> dict:
    """One read probe on arrays of its own (ReadProbe.probe)."""
    with ReadProbe(threads, cpus, engine) as probe:
        return probe.probe(trials)


def read_probes(results: dict, checked_only: bool = True, history: bool = True) -> list[tuple[float | None, float]]:
    """Every read-bandwidth probe of a results file as (when: epoch seconds or None, GB/s): the full probe made
    before the layers (``results["bandwidth"]``), the read-only ones between and after them
    (``results["bandwidth_probes"]``, analyze) and, with ``history``, the machine's earlier runs' probes that the
    run took up (``results["bandwidth_history"]``, see history.py). ``checked_only``: leave out probes whose
    values were wrong (the history keeps checked probes only)."""
    out: list[tuple[float | None, float]] = []
    if history:
        out += [(p.get("at"), p["read_best_gbps"]) for p in (results.get("bandwidth_history") or {}).get("probes", [])
                if p.get("read_best_gbps")]
    first = results.get("bandwidth") or {}
    for run in first.get("runs", []):
        read = run.get("kernels", {}).get("read", {})
        if read.get("best_gbps") and (run.get("check_ok", True) or not checked_only):
            out.append((first.get("at"), read["best_gbps"]))
    for probe in results.get("bandwidth_probes") or []:
        if probe.get("read_best_gbps") and (probe.get("check_ok", True) or not checked_only):
            out.append((probe.get("at"), probe["read_best_gbps"]))
    return out


def best_read_gbps(results: dict) -> float | None:
    """The bandwidth ceiling W of a results file: the best read GB/s over every checked probe it holds."""
    return max((gbps for _, gbps in read_probes(results)), default=None)


#: at least this many checked read probes before a run's median probe is taken for its sustained bandwidth
MIN_SUSTAINED_PROBES = 3
#: a run whose best read probe is this much above its middle one had bursts: its layers are judged at the middle
BURSTY = 1.10


def sustained_read_gbps(results: dict) -> float | None:
    """The DRAM read bandwidth the machine gives most of the time: the middle (lower middle) of the checked read
    probes a results file holds, this run's and, where it took them up (history.py), the machine's earlier runs';
    GB/s. None with fewer than MIN_SUSTAINED_PROBES (the series' W, the best probe, applies).

    A VM's bandwidth can come in bursts: on the dev VM about 35 GB/s, with bursts of 55-64 GB/s lasting one to four
    seconds every ten or so. W, the best probe (STREAM's rule), is then a burst, and a layer timed between bursts
    could not reach it. Judged against W, the same layer was kernel-limited in one run and bandwidth-bound in the
    next; judged against the moment's probes (the probes just before and after it) the verdict moved with where
    the probes fell. The middle probe is the same in both runs while bursts are the minority of the time; a layer
    that reads more than it (timed in a burst) is judged at what it read. On a machine without bursts (the best
    probe within BURSTY of the middle one) it is None: W applies, the same figure the next run will find.

    The dev VM's bandwidth also moves in phases of minutes (68-73 GB/s in one run, 36-44 in the next), so one run's
    own middle probe fell in one phase or the other; the middle of the machine's last days of probes (hundreds of
    them, over many phases) is the same for the next run. Judged at the best of them instead (W, a burst seen once
    in days: 62.5 GB/s against a middle of 35.4 in the dev VM's history), the same series was kernel-limited in one
    run and bandwidth-bound or mixed in the next (numpy fp32 of rwkv-0b4: 63, 35 and 17 of 115 stored runs), and
    the first run on a machine, with no history, judged at its own middle, disagreed with the runs after it."""
    probes = [gbps for _, gbps in read_probes(results)]
    if len(probes) < MIN_SUSTAINED_PROBES:
        return None
    middle = statistics.median_low(probes)  # of an even count the lower: a figure that was read, not a mean
    return middle if max(probes) > BURSTY * middle else None


# ------------------------------------------------------------------------------------------------
# Rendering and the command
