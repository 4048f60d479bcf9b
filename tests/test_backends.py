"""Backends: every one passes its float64 check on every unique layer shape of RWKV-7 0.1B."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import PROFILES

import rwkvprobe.backends as backends
from rwkvprobe.backends import (
    BACKEND_NAMES,
    TOLERANCE,
    Workload,
    available_backends,
    check_runner,
    get_backend,
)
from rwkvprobe.errors import InputError, MissingExtra
from rwkvprobe.measure import points
from rwkvprobe.measure.points import measure_point
from rwkvprobe.measure.timing import TimingPolicy
from rwkvprobe.model.profile import layer_list, load_profile

SHAPES = layer_list(load_profile(PROFILES / "rwkv-0b1.yaml")).unique_shapes()
USABLE, SKIPPED = available_backends()
CPU_CASES = [(b, d) for b in ("numpy", "torch", "torch-linear", "onnxruntime") for d in ("fp32", "fp16", "bf16")
             if b in USABLE and d in get_backend(b, 1).dtypes
             and not (d == "fp16" and b in ("numpy", "torch", "torch-linear"))]  # no fast fp16 kernels on x86: too slow for tests


def test_rwkv_0b1_has_the_expected_unique_shapes():
    assert (768, 65536) in SHAPES and (768, 3072) in SHAPES and (3072, 768) in SHAPES
    assert len(SHAPES) == 10


@pytest.mark.parametrize("backend, dtype", CPU_CASES)
def test_backend_correct_on_every_rwkv_0b1_shape(backend, dtype, tmp_path):
    b = get_backend(backend, 2)
    for k, n in SHAPES:
        for m in (1, 3):
            w = Workload(m, k, n, dtype)
            runner = b.prepare(w, 2, onnx_dir=tmp_path)
            try:
                result = check_runner(w, runner)
            finally:
                runner.close()
            assert result["ok"], (backend, dtype, m, k, n, result)
            # the dtype's bound, except onnxruntime fp16 on Arm (fp16 accumulation: 2^-11*sqrt(K))
            tol = TOLERANCE[dtype]
            if (backend, dtype) == ("onnxruntime", "fp16"):
                from rwkvprobe.backends.ort_backend import fp16_accumulation_tolerance

                tol = fp16_accumulation_tolerance(k) or tol
            assert result["tolerance"] == tol and result["rel_err"] <= tol


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_slow_fp16_paths_still_correct_on_small_shapes(backend, tmp_path):
    if backend not in USABLE:
        pytest.skip(f"{backend} not installed")
    b = get_backend(backend, 1)
    w = Workload(2, 96, 80, "fp16")
    runner = b.prepare(w, 2, onnx_dir=tmp_path)
    assert check_runner(w, runner)["ok"]
    runner.close()


class WrongRunner:
    """A runner whose results are off by 1%: the check must catch it."""

    copies = 1

    def __init__(self):
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((1, 32)).astype(np.float32)
        self.w = rng.standard_normal((32, 16)).astype(np.float32)

    def run(self, i):
        self.out = (self.a @ self.w) * 1.01

    def output(self, i):
        return self.out.astype(np.float64)

    def scale(self, i):
        return 1.0

    def inputs(self):
        return self.a, self.w

    def close(self):
        pass


def test_check_catches_a_wrong_result():
    result = check_runner(Workload(1, 32, 16, "fp32"), WrongRunner())
    assert not result["ok"] and result["rel_err"] > 5e-3 and "relative error" in result["detail"]


def test_wrong_result_is_not_timed(monkeypatch, tmp_path):
    b = get_backend("numpy", 1)
    monkeypatch.setattr(b, "prepare", lambda w, copies, onnx_dir=None: WrongRunner())
    point = measure_point(b, Workload(1, 32, 16, "fp32"), None, TimingPolicy(budget_seconds=0.05))
    assert point["check"]["ok"] is False and point["timing"] is None


def test_a_recheck_reuses_the_passed_check_of_the_same_workload(monkeypatch):
    """measure_point(checked=...) (analyze's rechecks: the same kernel on the same weights, rebuilt from the same
    seeds) keeps a passed check, marked reused, and times the point without checking again; a failed or missing
    one is no pass: the point is checked as usual (a wrong kernel is still caught and not timed)."""
    from rwkvprobe.measure import points

    b = get_backend("numpy", 1)
    w = Workload(1, 32, 16, "fp32")
    first = measure_point(b, w, None, TimingPolicy(budget_seconds=0.05))
    assert first["check"]["ok"] and "reused" not in first["check"]
    real = points.check_runner
    monkeypatch.setattr(points, "check_runner", lambda *a: pytest.fail("checked again"))
    again = measure_point(b, w, None, TimingPolicy(budget_seconds=0.05), checked=first["check"])
    assert again["check"] == {**first["check"], "reused": True} and again["timing"]["n"] >= 5
    monkeypatch.setattr(points, "check_runner", real)
    monkeypatch.setattr(b, "prepare", lambda w, copies, onnx_dir=None: WrongRunner())
    for earlier in ({"ok": False, "rel_err": 1.0}, None):
        wrong = measure_point(b, w, None, TimingPolicy(budget_seconds=0.05), checked=earlier)
        assert wrong["check"]["ok"] is False and "reused" not in wrong["check"] and wrong["timing"] is None


@pytest.mark.parametrize("m", [1, 4, 5, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_reference_is_the_float64_product_on_either_path(m, dtype):
    """reference() (einsum for a few rows, BLAS on widened column blocks past EINSUM_ROWS) gives A x W with every
    product and sum in float64, W in any layout (ggml's is a transposed view), as a float64 array of [M, N]."""
    from rwkvprobe.backends import EINSUM_ROWS, reference

    assert 1 <= EINSUM_ROWS < 16
    rng = np.random.default_rng(m)
    k, n = 300, 70
    a = rng.standard_normal((m, k)).astype(dtype)
    w = np.ascontiguousarray(rng.standard_normal((n, k)).astype(dtype)).T  # [K, N], column-major
    exact = np.array([[sum(float(x) * float(y) for x, y in zip(a[i], w[:, j])) for j in range(n)] for i in range(m)])
    out = reference(None, a, w, block=32)
    assert out.dtype == np.float64 and out.shape == (m, n)
    np.testing.assert_allclose(out, exact, rtol=0, atol=1e-12 * np.abs(exact).max())
    assert np.abs(out - a.astype(np.float32) @ w.astype(np.float32)).max() > 0  # float32 sums would differ


def test_a_kept_reference_is_given_again_only_for_inputs_equal_element_for_element():
    """References (check_runner's shared float64 reference): inputs equal to kept ones, element for element, get the
    kept reference; one element changed, another dtype or another shape compute their own, each equal to reference();
    a few rows (the einsum path) and a W over its size are never kept; the oldest go past its bytes."""
    from rwkvprobe.backends import EINSUM_ROWS, References, reference

    refs = References(max_weight_bytes=64 * 40 * 4, max_bytes=2**20)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((16, 64)).astype(np.float32)
    w = rng.standard_normal((64, 40)).astype(np.float32)
    first = refs(None, a, w)
    assert refs.computed == 1 and np.array_equal(first, reference(None, a, w))
    assert refs(None, a.copy(), w.copy()) is first and refs.computed == 1  # equal inputs: kept
    mine = rng.standard_normal((64, 40)).astype(np.float32)
    as_it_was = mine.copy()
    of_mine = refs(None, a, mine)
    mine[0, 0] += 1.0  # the caller's array changed after: what is kept is what the reference was computed from
    assert refs(None, a, as_it_was) is of_mine and refs.computed == 2
    assert not np.array_equal(refs(None, a, mine), of_mine) and refs.computed == 3
    w2 = w.copy()
    w2[3, 5] = np.nextafter(w2[3, 5], np.float32(np.inf))  # one element, one ulp
    for a_in, w_in in ((a, w2), (a.astype(np.float16), w.astype(np.float16)), (a[:8], w)):
        out = refs(None, a_in, w_in)
        assert out is not first and np.array_equal(out, reference(None, a_in, w_in))
    assert refs.computed == 6 and refs(None, a, w) is first
    few = a[:EINSUM_ROWS]
    refs(None, few, w)
    refs(None, few, w)
    assert refs.computed == 8  # the einsum path is never kept
    big = rng.standard_normal((64, 41)).astype(np.float32)  # over max_weight_bytes
    refs(None, a, big)
    refs(None, a, big)
    assert refs.computed == 10
    one = a.nbytes + w.nbytes + first.nbytes
    small = References(max_weight_bytes=w.nbytes, max_bytes=one + one // 2)
    small(None, a, w)
    small(None, a, w2)  # the first goes
    small(None, a, w2)
    small(None, a, w)
    assert small.computed == 3


def test_a_wrong_kernel_fails_its_check_on_a_reference_a_right_one_computed():
    """A wrong kernel checked on the same inputs as a right one before it (the reference given again) still fails."""
    from rwkvprobe.backends import shared_reference

    wrong = WrongRunner()
    wrong.a = np.random.default_rng(1).standard_normal((8, 32)).astype(np.float32)  # past EINSUM_ROWS: kept

    class Right(WrongRunner):
        def run(self, i):
            self.out = self.a @ self.w

    right = Right()
    right.a = wrong.a
    w = Workload(m=8, k=32, n=16, dtype="fp32")
    shared_reference.clear()
    assert check_runner(w, right)["ok"]
    computed = shared_reference.computed
    bad = check_runner(w, wrong)
    assert shared_reference.computed == computed  # the reference was given again
    assert bad["ok"] is False and "relative error" in bad["detail"]
    shared_reference.clear()


def test_unknown_backend():
    with pytest.raises(InputError, match="unknown backend 'cuda9'"):
        get_backend("cuda9", 1)


def test_missing_optional_backend_names_the_extra():
    if importlib.util.find_spec("tinygrad") is not None:
        pytest.skip("tinygrad is installed here")
    assert "tinygrad" in SKIPPED and "rwkvprobe[tinygrad]" in SKIPPED["tinygrad"]
    with pytest.raises(MissingExtra, match=r"pip install 'rwkvprobe\[tinygrad\]'"):
        get_backend("tinygrad", 1)


def test_cuda_backend_skips_cleanly_without_gpu():
    if "torch-cuda" in USABLE:
        pytest.skip("a GPU is present")
    assert SKIPPED["torch-cuda"]
    with pytest.raises(InputError, match="torch-cuda"):
        get_backend("torch-cuda", 1)


def test_registry_names():
    assert set(BACKEND_NAMES) >= {"numpy", "torch", "onnxruntime", "torch-cuda", "tinygrad"}


@pytest.mark.skipif("torch" not in USABLE, reason="torch not installed")
def test_torch_linear_stores_weights_n_by_k_and_runs_only_when_named():
    from rwkvprobe.measure.analyze import AnalyzeSettings, plan_series

    b = get_backend("torch-linear", 1)
    runner = b.prepare(Workload(1, 64, 48, "fp32"), 2)
    try:
        w = runner.weights[0]
        assert tuple(w.shape) == (64, 48) and w.stride() == (1, 64)  # a [N, K] buffer seen as [K, N]
        assert check_runner(Workload(1, 64, 48, "fp32"), runner)["ok"]
    finally:
        runner.close()
    assert b.describe()["weight_layout"].startswith("[N, K]")
    default, _ = plan_series(AnalyzeSettings(backends=None, dtypes=["fp32"], tokens=[1], threads=1, cpus=None))
    assert ("torch", "fp32") in default and not any(x == "torch-linear" for x, _ in default)
    named, _ = plan_series(AnalyzeSettings(backends=["torch-linear"], dtypes=None, tokens=[1], threads=1, cpus=None))
    assert named == [("torch-linear", "fp32")]


@pytest.mark.skipif("torch" not in USABLE, reason="torch not installed")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_torch_linear_weights_sit_where_the_reference_keeps_rwkv4_to_6_weights(dtype):
    """Each torch-linear CPU weight copy in a mapping of its own, WEIGHT_PAGE_OFFSET bytes into a page (where the
    reference keeps RWKV-4/5/6 weights on a CPU), whatever this process allocated and freed before; the copies
    stay valid (the tensor keeps its mapping) and the runner's check passes after a garbage collection."""
    name = "torch-linear"
    import gc

    torch = pytest.importorskip("torch")
    from rwkvprobe.backends.torch_backend import WEIGHT_PAGE_OFFSET

    big = torch.empty(64 * 2**20, dtype=torch.uint8)  # a large block freed: glibc's mmap threshold rises
    del big
    w = Workload(1, 256, 384, dtype)
    runner = get_backend(name, 1).prepare(w, 3)
    try:
        gc.collect()
        assert {x.data_ptr() % 4096 for x in runner.weights} == {WEIGHT_PAGE_OFFSET}
        assert len({x.data_ptr() for x in runner.weights}) == 3
        assert check_runner(w, runner)["ok"]
    finally:
        runner.close()


def test_fp16_accumulation_bound_only_on_arm():
    from rwkvprobe.backends import TOLERANCE
    from rwkvprobe.backends.ort_backend import fp16_accumulation_tolerance

    assert fp16_accumulation_tolerance(768, "x86_64") is None  # fp32 accumulation: the dtype's 5e-3
    got = fp16_accumulation_tolerance(768, "aarch64")
    assert got == pytest.approx(2.0**-11 * 768**0.5) and got > 6.04e-3  # what CI's aarch64 step measured
    assert fp16_accumulation_tolerance(16, "aarch64") == TOLERANCE["fp16"]  # never tighter than fp32's
    # still far below what a wrong kernel gives on the largest RWKV K
    assert fp16_accumulation_tolerance(16384, "aarch64") < 0.1


def test_fp16_onnxruntime_runner_uses_the_arm_bound_there(monkeypatch, tmp_path):
    import platform

    from rwkvprobe.backends import available_backends

    if "onnxruntime" not in available_backends()[0]:
        pytest.skip("onnxruntime not installed")
    b = get_backend("onnxruntime", 1)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    runner = b.prepare(b.workload(1, 256, 64, "fp16"), 1, onnx_dir=tmp_path)
    try:
        assert runner.tolerance == pytest.approx(2.0**-11 * 16)
        assert check_runner(b.workload(1, 256, 64, "fp16"), runner)["tolerance"] == runner.tolerance
    finally:
        runner.close()


def test_onnxruntime_sessions_of_a_process_share_one_thread_pool(tmp_path):
    """A point's weight copies are one session each: on one pool (as a deployed model's one session), not a pool
    each whose spinning workers take the CPUs from the next copy's call. In a fresh process: four copies add one
    worker thread (a pool of 2), an untimed session made afterwards takes the same pool, and describe() says so, and
    says where a backend of another thread count would run on that pool."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("counts threads in /proc")
    code = f"""
import json, os
from rwkvprobe.backends import get_backend
from rwkvprobe.backends.ort_backend import pool_threads, session_options
import onnxruntime as ort
from rwkvprobe.backends.ort_backend import OrtBackend
OrtBackend.dtype_unavailable("int8-a8")  # the correctness probe analyze runs first: untimed, it makes no pool
assert pool_threads() is None
b = get_backend("onnxruntime", 2)
before = len(os.listdir("/proc/self/task"))
runner = b.prepare(b.workload(1, 256, 512, "fp32"), 4, onnx_dir=r"{tmp_path}")
for i in range(4):
    runner.run(i)
after = len(os.listdir("/proc/self/task"))
extra = ort.InferenceSession(str(runner.path), sess_options=session_options(), providers=["CPUExecutionProvider"])
print(json.dumps({{"added": after - before, "pool": pool_threads(), "describe": b.describe()["thread_pool"],
                  "other": get_backend("onnxruntime", 1).describe()["thread_pool"],
                  "extra_ok": extra.run(None, runner.feeds)[0].shape == (1, 512)}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["pool"] == 2 and got["added"] <= 1 and got["extra_ok"]
    assert got["describe"].startswith("one pool of 2 threads for every session") and "asked for" not in got["describe"]
    assert got["other"].endswith("; not the 1 asked for: the process's pool was made first")


def test_onnxruntime_fp16_weights_count_at_the_type_its_session_holds_them(monkeypatch, tmp_path):
    """fp16_weights_held_as() reads the graph onnxruntime optimizes an fp16 MatMul into; it agrees with the memory a
    real fp16 session of a 2048x4096 weight keeps (16.8 MB at fp16, 33.6 at fp32), and an onnxruntime fp16 workload
    and its point count the weight at that type (4 bytes a weight where held as fp32), for either answer."""
    pytest.importorskip("psutil")
    if "onnxruntime" not in USABLE:
        pytest.skip("onnxruntime not installed")
    from rwkvprobe.backends import ort_backend
    from rwkvprobe.backends.onnxgen import ModelSpec

    held = ort_backend.fp16_weights_held_as()
    assert held in ("fp16", "fp32")
    b = get_backend("onnxruntime", 1)
    path = ort_backend.float_model(ModelSpec(1, 2048, 4096, "fp16"), tmp_path)
    # the session's memory measured in a fresh process (in this one, memory other tests free moves the figure)
    code = f"""
import gc, json, psutil
import onnxruntime as ort
from rwkvprobe.backends.ort_backend import fp16_weights_held_as, session_options
held = fp16_weights_held_as()  # its own tiny session first: the pool and arenas are not counted below
gc.collect()
before = psutil.Process().memory_full_info().uss
s = ort.InferenceSession(r"{path}", sess_options=session_options(1), providers=["CPUExecutionProvider"])
print(json.dumps({{"held": held, "grown": psutil.Process().memory_full_info().uss - before}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["held"] == held
    assert (got["grown"] > 1.5 * 2048 * 4096 * 2) == (held == "fp32"), got
    ort_backend.fp16_weights_held_as.cache_clear()
    try:
        with monkeypatch.context() as m:  # no onnxruntime to ask: the weight counts as the dtype says
            m.setitem(sys.modules, "onnxruntime", None)
            assert ort_backend.fp16_weights_held_as() == "fp16"
        ort_backend.fp16_weights_held_as.cache_clear()
        for answer, per in (("fp32", 4.0), ("fp16", 2.0)):
            monkeypatch.setattr(ort_backend, "fp16_weights_held_as", lambda answer=answer: answer)
            w = b.workload(1, 64, 32, "fp16")
            assert w.bytes_per_weight == per and w.weight_dtype == ("fp32" if per == 4.0 else "")
            assert w.bytes_moved == 64 * 32 * per + (64 + 32) * 2
            p = measure_point(b, w, None, TimingPolicy(budget_seconds=0.02), onnx_dir=tmp_path)
            assert p["check"]["ok"] and p["bytes_per_weight"] == per and p.get("weight_dtype", "") == w.weight_dtype
            assert b.workload(1, 64, 32, "fp32").bytes_per_weight == 4.0 and not b.workload(1, 64, 32, "fp32").weight_dtype
    finally:
        monkeypatch.undo()
        ort_backend.fp16_weights_held_as.cache_clear()


def test_onnxruntime_float_models_beside_their_weight_file_are_correct_and_copies_never_share_it(monkeypatch, tmp_path):
    """onnxruntime's float models are written with the weight in a .data file beside the .onnx (mapped as a session
    loads, not parsed out of the protobuf). Where onnxruntime keeps reading the mapped file (here forced: on x86 its
    fp32 and fp16 MatMul make copies of their own), copies 1.. get private weight buffers, so no two copies read the
    same memory, and every copy is still checked right; where it does not, every copy is a session of the file."""
    if "onnxruntime" not in USABLE:
        pytest.skip("onnxruntime not installed")
    from rwkvprobe.backends import ort_backend

    b = get_backend("onnxruntime", 1)
    w = b.workload(1, 256, 96, "fp32")
    runner = b.prepare(w, 3, onnx_dir=tmp_path)
    try:
        assert runner.path.name == "matmul_m1_k256_n96_fp32.ext.onnx"
        data = ort_backend.external_data(runner.path)
        assert data is not None and data.stat().st_size == 256 * 96 * 4
        assert runner.path.stat().st_size < 4096  # the graph alone
        held_in_file = ort_backend._mapped(data) is not False
        assert len(runner.private_weights) == (2 if held_in_file else 0)
        assert check_runner(w, runner)["ok"]
    finally:
        runner.close()
    monkeypatch.setattr(ort_backend, "_mapped", lambda path: True)
    for dtype in ("fp32", "fp16"):
        w = b.workload(1, 256, 96, dtype)
        runner = b.prepare(w, 3, onnx_dir=tmp_path)
        try:
            assert len(runner.sessions) == 3 and len(runner.private_weights) == 2
            a, c = runner.private_weights
            assert a.shape == (256, 96) and a.dtype == np.dtype(np.float32 if dtype == "fp32" else np.float16)
            assert not np.shares_memory(a, c) and np.array_equal(a, c)
            result = check_runner(w, runner)
            assert result["ok"], result
            a[:] = 0  # the sessions of copies 1.. read their own buffers
            runner.run(1)
            assert not np.any(runner.output(1)) or not held_in_file
        finally:
            runner.close()


def test_a_points_weights_are_made_and_checked_on_small_pages_and_timed_as_numpy_left_them(monkeypatch):
    """measure_point generates the base weight, prepares the copies and checks them with numpy's huge-page madvise
    off (small_pages), then times with it as it was: the switch is numpy's, flipped and restored."""
    state, seen = [True], {}

    def toggle(enabled):
        before, state[0] = state[0], enabled
        return before

    def spy(name, real):
        def call(*args, **kwargs):
            seen.setdefault(name, state[0])
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(backends, "_MADVISE", toggle)
    monkeypatch.setattr(backends, "weight_matrix", spy("generate", backends.weight_matrix))
    monkeypatch.setattr(points, "check_runner", spy("check", points.check_runner))
    monkeypatch.setattr(points, "measure", spy("time", points.measure))
    backends.base_weight.cache_clear()
    b = get_backend("numpy", 1)
    p = points.measure_point(b, b.workload(2, 256, 512, "fp32"), None, TimingPolicy(budget_seconds=0.01, min_samples=3))
    assert p["check"]["ok"] and seen == {"generate": False, "check": False, "time": True} and state == [True]
    backends.base_weight.cache_clear()


THP = "/sys/kernel/mm/transparent_hugepage/enabled"


#: run in a fresh process (its heap holds no memory numpy marked earlier): the base weight's mappings, whether any is
#: marked for huge pages (VmFlags "hg", what numpy's madvise sets) and the huge pages they hold
_PAGES_OF_THE_BASE_WEIGHT = """
import re, sys
from rwkvprobe import backends
if sys.argv[1] == "asked":  # numpy asks for huge pages, as it does outside small_pages
    backends._MADVISE, real = (lambda enabled: real(True)), backends._MADVISE
w = backends.base_weight(2048, 8192)
lo, hi, marked, huge = w.ctypes.data, w.ctypes.data + w.nbytes, False, 0
with open("/proc/self/smaps") as f:
    inside = False
    for line in f:
        if m := re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line):
            inside = int(m[1], 16) < hi and int(m[2], 16) > lo
        elif inside and line.startswith("AnonHugePages:"):
            huge += int(line.split()[1])
        elif inside and line.startswith("VmFlags:"):
            marked = marked or "hg" in line.split()[1:]
print(marked, huge)
"""


@pytest.mark.skipif(not os.path.exists(THP) or "[madvise]" not in open(THP).read() or backends._MADVISE is None,
                    reason="transparent huge pages are not in madvise mode here (or this numpy has no switch)")
def test_the_base_weight_sits_on_small_pages_where_huge_pages_come_only_on_request():
    """With the kernel's huge pages given only on madvise, a 64 MB base weight's memory is not marked for them and
    holds none; with numpy asking (its default outside small_pages) the same weight's memory is marked. In a fresh
    process: glibc serves even a 64 MB array from heap memory freed earlier, which keeps the mark of the arrays numpy
    put there (CI's whole suite once gave it 30 MiB of huge pages)."""
    def pages(how: str) -> tuple[bool, int]:
        done = subprocess.run([sys.executable, "-c", _PAGES_OF_THE_BASE_WEIGHT, how], capture_output=True, text=True,
                              check=True)
        marked, huge = done.stdout.split()
        return marked == "True", int(huge)

    assert pages("small") == (False, 0)
    assert pages("asked")[0] is True
