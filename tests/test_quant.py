"""Quantized weights (int8, int4, int8-dyn): real bytes per format, outputs against A x the
dequantized weight, formats without a kernel reported unavailable, labels."""

import importlib.util

import numpy as np
import pytest

from rwkvprobe.backends import (
    DTYPES,
    TOLERANCE,
    UnavailableDtype,
    Workload,
    available_backends,
    backend_class,
    check_runner,
    get_backend,
)
from rwkvprobe.backends.ort_backend import session_options
from rwkvprobe.measure.points import measure_point
from rwkvprobe.measure.timing import TimingPolicy
from rwkvprobe.model.quant import DEFAULT_BLOCK_SIZE, FORMATS, dynamic_quantize_linear

USABLE, _ = available_backends()
needs_ort = pytest.mark.skipif("onnxruntime" not in USABLE, reason="onnxruntime not installed")
needs_torch = pytest.mark.skipif("torch" not in USABLE, reason="torch not installed")

RWKV = (768, 3072)  # RWKV-7 0.1B/0.4B ffn.key


# ------------------------------------------------------------------------------------------------
# Byte accounting: exact numbers, scales and zero points included

def test_default_block_size_is_32():
    assert DEFAULT_BLOCK_SIZE == 32 and Workload(1, 64, 64, "int4").block_size == 32


@pytest.mark.parametrize("scheme, weight_bytes, per_weight", [
    # 768*3072/2 packed + 3072 columns * 24 blocks * 4 B fp32 scales + 3072 * 12 B (24 packed 4-bit zero points)
    ("nbits4", 1_179_648 + 294_912 + 36_864, 0.640625),
    # 768*3072 + 3072*24*4 scales + 3072*24 uint8 zero points
    ("nbits8", 2_359_296 + 294_912 + 73_728, 1.15625),
    # the same weights, computed with int8 activations
    ("nbits4a8", 1_179_648 + 294_912 + 36_864, 0.640625),
    ("nbits8a8", 2_359_296 + 294_912 + 73_728, 1.15625),
    # one fp32 scale and one int8 zero point for the whole matrix
    ("dynamic8", 2_359_296 + 4 + 1, 1 + 5 / (768 * 3072)),
    # one fp32 scale per output column, symmetric
    ("int8pack", 2_359_296 + 3072 * 4, 1 + 4 / 768),
    # fp32 scale + fp32 zero per group of 32
    ("int4pack", 1_179_648 + 3072 * 24 * 8, 0.75),
])
def test_weight_bytes_per_format(scheme, weight_bytes, per_weight):
    fmt = FORMATS[scheme]
    w = Workload(1, *RWKV, fmt.dtype, scheme=scheme)
    assert w.weight_bytes == weight_bytes == fmt.weight_bytes(*RWKV, 32)
    assert w.bytes_per_weight == pytest.approx(per_weight, rel=1e-12)
    # activations stay fp32: A read once, C written once
    assert w.bytes_moved == weight_bytes + 768 * 4 + 3072 * 4
    assert w.flops == 2 * 768 * 3072


def test_block_size_and_padding_change_the_bytes():
    # block 64: 12 scales and 6 bytes of zero points per column
    assert Workload(1, *RWKV, "int4", block_size=64).weight_bytes == 1_179_648 + 3072 * 12 * 4 + 3072 * 6
    # K=100 is stored padded to 4 blocks of 32 = 128 rows
    assert Workload(1, 100, 64, "int4").weight_bytes == 64 * 64 + 64 * 4 * 4 + 64 * 2
    assert Workload(1, 100, 64, "int8").weight_bytes == 64 * 128 + 64 * 4 * 4 + 64 * 4
    # an odd number of blocks still packs zero points in whole bytes per column
    assert Workload(1, 96, 10, "int4").weight_bytes == 10 * 48 + 10 * 3 * 4 + 10 * 2


def test_float_dtypes_unchanged():
    w = Workload(3, *RWKV, "fp32")
    assert w.weight_bytes == 768 * 3072 * 4 and w.bytes_moved == 768 * 3072 * 4 + 3 * 768 * 4 + 3 * 3072 * 4
    assert Workload(1, *RWKV, "fp16").bytes_moved == 768 * 3072 * 2 + 768 * 2 + 3072 * 2
    assert w.key == "m3_k768_n3072_fp32" and w.label == "fp32" and w.weight_format is None
    assert Workload(1, 8, 8, "bf16") == Workload(1, 8, 8, "bf16", DEFAULT_BLOCK_SIZE)


def test_keys_name_format_and_block():
    assert Workload(1, *RWKV, "int4").key == "m1_k768_n3072_int4_nbits4_b32"
    assert Workload(1, *RWKV, "int8-dyn").key == "m1_k768_n3072_int8-dyn_dynamic8"
    assert set(DTYPES) >= {"fp32", "fp16", "bf16", *ORT_QUANT}
    assert set(TOLERANCE) >= set(DTYPES)


def test_scheme_must_store_the_dtype():
    with pytest.raises(ValueError, match="does not store"):
        Workload(1, 64, 64, "int8", scheme="nbits4")


# ------------------------------------------------------------------------------------------------
# Labels

def test_labels():
    ort = backend_class("onnxruntime")
    assert ort.format_label("int4") == "int4 (MatMulNBits, block 32)"
    assert ort.format_label("int8") == "int8 (MatMulNBits, block 32)"
    assert ort.format_label("int4", 64) == "int4 (MatMulNBits, block 64)"
    assert ort.format_label("int8-dyn") == "int8-dyn (MatMulInteger, per-tensor, uint8 per-tensor activations)"
    assert ort.format_label("int4-a8") == "int4-a8 (MatMulNBits, block 32, int8 per-block activations)"
    assert ort.format_label("int8-a8", 128) == "int8-a8 (MatMulNBits, block 128, int8 per-block activations)"
    assert ort.format_label("fp16") == "fp16"
    torch = backend_class("torch")
    assert torch.format_label("int8") == "int8 (torch _weight_int8pack_mm, per-channel)"
    assert torch.format_label("int4") == "int4 (torch _weight_int4pack_mm_for_cpu, block 32)"
    assert torch.workload(1, *RWKV, "int8").label == torch.format_label("int8")
    assert ort.workload(1, *RWKV, "int4", 64) == Workload(1, *RWKV, "int4", 64, "nbits4")


# ------------------------------------------------------------------------------------------------
# Outputs against A x dequantized weight, tight; quantization noise recorded apart

def _raw_ort_runner(w, copies, folder, threads=1):
    """onnxruntime's kernel for ``w`` without the backend's availability gate (whatever this CPU does)."""
    from rwkvprobe.backends.ort_backend import OrtRunner, write_quantized_model

    return OrtRunner(w, copies, write_quantized_model(w, folder), threads)


def ort_refusal(dtype, tmp_path):
    """None when onnxruntime's ``dtype`` kernel is used here; else its refusal, checked to be real.

    Some kernels are wrong on some CPUs (MatMulInteger's u8 x s8 saturates without VNNI): rwkvprobe
    then refuses the dtype with the measured error. A refusal must name the error, and the raw kernel,
    run without the gate, must really miss its tolerance here: a refusal of a correct kernel fails.
    """
    reason = backend_class("onnxruntime").dtype_unavailable(dtype)
    if reason is None:
        return None
    assert reason.startswith("onnxruntime's ") and "gives wrong results here (relative error " in reason, reason
    w = backend_class("onnxruntime").workload(1, 64, 16, dtype)
    runner = _raw_ort_runner(w, 1, tmp_path)
    try:
        result = check_runner(w, runner)
    finally:
        runner.close()
    assert not result["ok"] and result["rel_err"] > TOLERANCE[dtype], (dtype, result)
    with pytest.raises(UnavailableDtype, match="gives wrong results here"):
        get_backend("onnxruntime", 1).prepare(w, 1, onnx_dir=tmp_path)
    return reason


def _check(backend, w, copies, tmp_path):
    runner = backend.prepare(w, copies, onnx_dir=tmp_path)
    try:
        assert runner.copies == copies
        return check_runner(w, runner)
    finally:
        runner.close()


#: expected quantization noise vs the fp32 weight (informational): far above the tolerances
NOISE = {"int4": (1e-2, 0.2), "int8": (5e-4, 2e-2), "int8-dyn": (1e-3, 3e-2), "int4-a8": (1e-2, 0.2),
         "int8-a8": (1e-3, 3e-2)}
ORT_QUANT = ["int4", "int8", "int8-dyn", "int4-a8", "int8-a8"]


@needs_ort
@pytest.mark.parametrize("dtype", ORT_QUANT)
@pytest.mark.parametrize("m, k, n", [(1, *RWKV), (2, 3072, 768), (3, 100, 64), (1, 4096, 48)])
def test_onnxruntime_quantized_matches_dequantized_reference(dtype, m, k, n, tmp_path):
    if ort_refusal(dtype, tmp_path):
        return  # refused on this CPU, and the refusal was checked to be real
    b = get_backend("onnxruntime", 2)
    w = b.workload(m, k, n, dtype)
    result = _check(b, w, 3, tmp_path)  # 3 sessions: the cold-cache rotation
    assert result["ok"], result
    assert result["rel_err"] <= TOLERANCE[dtype]
    # fp32 compute against the dequantized weight: ~1e-7..1e-6; int8-dyn's activation replay is exact
    assert result["rel_err"] < 1e-5
    lo, hi = NOISE[dtype]
    assert lo < result["quantization_rel_err"] < hi
    assert result["format"] == w.label


@needs_torch
@pytest.mark.parametrize("dtype", ["int4", "int8"])
@pytest.mark.parametrize("m, k, n", [(1, *RWKV), (2, 3072, 768), (3, 96, 64)])
def test_torch_quantized_matches_dequantized_reference(dtype, m, k, n, tmp_path):
    b = get_backend("torch", 2)
    reason = b.dtype_unavailable(dtype)
    if reason:
        pytest.skip(reason)
    w = b.workload(m, k, n, dtype)
    result = _check(b, w, 3, tmp_path)  # copies scaled 1, 1/2, 2: each one checked
    assert result["ok"], result
    assert result["rel_err"] < 1e-5
    lo, hi = NOISE[dtype]
    assert lo < result["quantization_rel_err"] < hi


class FP32KernelRunner:
    """Pretends to be a quantized kernel but multiplies the original fp32 weight: must be caught."""

    copies = 1

    def __init__(self, w, real):
        self.w, self.real = w, real

    def run(self, i):
        from rwkvprobe.backends import activation, base_weight

        self.out = activation(self.w.m, self.w.k).astype(np.float64) @ base_weight(self.w.k, self.w.n)

    def output(self, i):
        return self.out

    def scale(self, i):
        return 1.0

    def inputs(self):
        return self.real.inputs()

    def close(self):
        self.real.close()


@needs_ort
def test_quantization_noise_does_not_hide_a_wrong_kernel(tmp_path):
    b = get_backend("onnxruntime", 1)
    for dtype in ORT_QUANT:  # every format, whether or not its kernel is right on this CPU
        w = b.workload(1, *RWKV, dtype)
        runner = FP32KernelRunner(w, _raw_ort_runner(w, 1, tmp_path))
        result = check_runner(w, runner)
        runner.close()
        assert not result["ok"] and result["rel_err"] > 5 * TOLERANCE[dtype], (dtype, result)


def test_dynamic_quantize_linear_replay():
    a = np.array([[-1.0, 0.0, 0.6, 2.0]], dtype=np.float32)
    q, scale, zp = dynamic_quantize_linear(a)
    assert scale == np.float32(3.0 / 255) and zp == 85
    assert q.tolist() == [[0, 85, 136, 255]]


@needs_ort
def test_dynamic_quantize_linear_matches_onnxruntime_bit_for_bit():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("DynamicQuantizeLinear", ["A"], ["Q", "S", "Z"])
    graph = helper.make_graph([node], "dql", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [3, 4096])],
                              [helper.make_tensor_value_info("Q", TensorProto.UINT8, [3, 4096]),
                               helper.make_tensor_value_info("S", TensorProto.FLOAT, []),
                               helper.make_tensor_value_info("Z", TensorProto.UINT8, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 7
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.7, -0.4):
        a = (rng.standard_normal((3, 4096)) + shift).astype(np.float32)
        q_ort, s_ort, z_ort = sess.run(None, {"A": a})
        q, s, z = dynamic_quantize_linear(a)
        assert s == s_ort and z == z_ort and np.array_equal(q, q_ort)


# ------------------------------------------------------------------------------------------------
# Cached quantized models

@needs_ort
def test_quantized_models_cached_next_to_fp32(tmp_path):
    b = get_backend("onnxruntime", 1)
    w = b.workload(1, 256, 128, "int4")
    b.prepare(w, 1, onnx_dir=tmp_path).close()
    q = tmp_path / "matmul_m1_k256_n128_nbits4_b32.onnx"
    assert q.is_file() and (tmp_path / "matmul_m1_k256_n128_fp32.ext.onnx").is_file()
    assert (tmp_path / "matmul_m1_k256_n128_fp32.ext.onnx.data").stat().st_size == 256 * 128 * 4
    mtime = q.stat().st_mtime_ns
    b.prepare(w, 1, onnx_dir=tmp_path).close()
    assert q.stat().st_mtime_ns == mtime  # reused
    b.prepare(b.workload(1, 256, 128, "int4", 64), 1, onnx_dir=tmp_path).close()
    _raw_ort_runner(b.workload(1, 256, 128, "int8-dyn"), 1, tmp_path).close()  # cached even where refused
    assert (tmp_path / "matmul_m1_k256_n128_nbits4_b64.onnx").is_file()
    assert (tmp_path / "matmul_m1_k256_n128_dynamic8.onnx").is_file()
    q.write_bytes(b"not a model")  # a damaged or foreign file is rebuilt, not trusted
    assert _check(b, w, 1, tmp_path)["ok"]


# ------------------------------------------------------------------------------------------------
# No kernel: reported unavailable, never faked

def test_numpy_has_no_quantized_kernel(tmp_path):
    b = get_backend("numpy", 1)
    for dtype in ORT_QUANT:
        assert b.dtype_unavailable(dtype) == f"numpy has no {dtype} kernel"
        assert dtype not in b.usable_dtypes()
        with pytest.raises(UnavailableDtype, match="no .* kernel"):
            b.prepare(Workload(1, 64, 64, dtype), 1)
    point = measure_point(b, Workload(1, 64, 64, "int4"), None, TimingPolicy(budget_seconds=0.05), onnx_dir=tmp_path)
    assert point["timing"] is None and point["check"] is None and "numpy has no int4 kernel" in point["error"]


@needs_torch
def test_torch_formats_and_missing_kernels(monkeypatch):
    from rwkvprobe.backends import torch_backend

    b = get_backend("torch", 1)
    assert b.dtype_unavailable("int8-dyn") == "torch has no int8-dyn kernel"
    # a workload described in onnxruntime's format must not be timed as torch's (other bytes)
    if b.dtype_unavailable("int8") is None:
        with pytest.raises(UnavailableDtype, match="build the workload with backend.workload"):
            b.prepare(Workload(1, 64, 64, "int8"), 1)
    if b.dtype_unavailable("int4") is None:
        with pytest.raises(UnavailableDtype, match="multiple of the int4 group size"):
            b.prepare(b.workload(1, 100, 64, "int4"), 1)
        with pytest.raises(UnavailableDtype, match="block size 16 is not supported"):
            b.prepare(b.workload(1, 64, 64, "int4", 16), 1)
    # an op this torch lacks: the dtype is reported unavailable with the op's name
    monkeypatch.setitem(torch_backend._QUANT_OPS, "int4", ("_weight_int4pack_mm_nowhere",))
    torch_backend._probe.cache_clear()
    try:
        assert "has no _weight_int4pack_mm_nowhere" in b.dtype_unavailable("int4")
        assert "int4" not in b.usable_dtypes()
        with pytest.raises(UnavailableDtype, match="_weight_int4pack_mm_nowhere"):
            b.prepare(b.workload(1, 64, 64, "int4"), 1)
    finally:
        monkeypatch.undo()
        torch_backend._probe.cache_clear()


@needs_torch
def test_cuda_torch_offers_no_cpu_weight_packs():
    cls = backend_class("torch-cuda")
    assert not set(cls.dtypes) & set(ORT_QUANT)


@needs_ort
def test_onnxruntime_rejects_unsupported_block_size(tmp_path):
    b = get_backend("onnxruntime", 1)
    with pytest.raises(UnavailableDtype, match="block size 24"):
        b.prepare(b.workload(1, 64, 64, "int4", 24), 1, onnx_dir=tmp_path)


# ------------------------------------------------------------------------------------------------
# End to end through measure_point (cold rotation, check, timing)

@needs_ort
@pytest.mark.parametrize("dtype", ORT_QUANT)
def test_measure_point_quantized(dtype, tmp_path):
    b = get_backend("onnxruntime", 1)
    w = b.workload(1, 256, 512, dtype)
    point = measure_point(b, w, 1 << 20, TimingPolicy(budget_seconds=0.05), cold=True, onnx_dir=tmp_path)
    reason = ort_refusal(dtype, tmp_path)
    if reason:  # refused on this CPU: recorded as an error with the reason, never timed
        assert point["timing"] is None and point["check"] is None and reason in point["error"]
        return
    assert point["error"] is None and point["check"]["ok"], point
    assert point["bytes"] == w.bytes_moved and point["timing"]["median_seconds"] > 0
    assert "quantization_rel_err" in point["check"]


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_onnxruntime_offers_all_quantized_dtypes_here(tmp_path):
    cls = backend_class("onnxruntime")
    # the weight-only formats compute in fp32: every CPU must run them right
    assert {"int4", "int8"} <= set(cls.usable_dtypes()), {d: cls.dtype_unavailable(d) for d in cls.dtypes}
    # the integer-activation ones are used, or refused with a real, measured reason
    refused = {d: ort_refusal(d, tmp_path) for d in ORT_QUANT}
    assert set(cls.usable_dtypes()) == ({"fp32", "fp16"} | {d for d, r in refused.items() if r is None})


@needs_ort
def test_a_kernel_wrong_on_this_cpu_is_refused_everywhere_it_is_asked_for(monkeypatch, tmp_path):
    """Forces the 'kernel wrong here' branch (as int8-dyn is on CPUs without VNNI) on any CPU:
    a saturating kernel is refused with its measured error, skipped by analyze with that reason,
    never timed, and the test helper above accepts the refusal as real."""
    from rwkvprobe.backends import ort_backend

    real_output = ort_backend.OrtRunner.output

    def saturating(self, i):  # what MatMulInteger's u8 x s8 path does without VNNI: clipped sums
        out = real_output(self, i)
        if self.workload.dtype == "int8-dyn":
            lim = 0.6 * float(np.max(np.abs(out)))
            out = np.clip(out, -lim, lim)
        return out

    monkeypatch.setattr(ort_backend.OrtRunner, "output", saturating)
    ort_backend._probe.cache_clear()
    try:
        cls = backend_class("onnxruntime")
        reason = cls.dtype_unavailable("int8-dyn")
        assert reason is not None and "int8-dyn (MatMulInteger" in reason and "gives wrong results here" in reason
        assert "int8-dyn" not in cls.usable_dtypes() and cls.dtype_unavailable("int4") is None
        assert ort_refusal("int8-dyn", tmp_path) == reason  # the helper sees a real failure
        b = get_backend("onnxruntime", 1)
        point = measure_point(b, b.workload(1, 64, 64, "int8-dyn"), None, TimingPolicy(budget_seconds=0.05),
                              onnx_dir=tmp_path)
        assert point["timing"] is None and "gives wrong results here" in point["error"]
        from rwkvprobe.measure.analyze import AnalyzeSettings, plan_series

        pairs, skipped = plan_series(AnalyzeSettings(backends=["onnxruntime"], dtypes=["fp32", "int8-dyn"],
                                                     tokens=[1], threads=1, cpus=None))
        assert pairs == [("onnxruntime", "fp32")]
        assert [(x["backend"], x["dtype"]) for x in skipped] == [("onnxruntime", "int8-dyn")]
        assert "gives wrong results here" in skipped[0]["reason"]
    finally:
        monkeypatch.undo()
        ort_backend._probe.cache_clear()
