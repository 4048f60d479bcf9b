"""onnxruntime (CPU): runs the MatMul models that ``rwkvprobe onnx`` writes, one session per copy.

The float models are the same graph with the weight in a ``.data`` file beside it (``matmul_..._fp32.ext.onnx``,
float_model): onnxruntime maps that file as a session loads instead of parsing the weight out of the protobuf.
Quantized dtypes are converted from the fp32 models with onnxruntime's own quantizers and cached
next to them (``matmul_m1_k768_n3072_nbits4_b32.onnx``):

- ``int4`` / ``int8``: weight-only blockwise ``MatMulNBits`` (com.microsoft), made by the C++ block
  quantizer that ``onnxruntime.quantization.matmul_nbits_quantizer`` calls
  (``quantize_matmul_4bits`` / ``quantize_matmul_8bits``), with the same node it writes: asymmetric
  (a zero point per block), block 32 unless asked otherwise, ``accuracy_level`` 1 (fp32 compute).
  The Python ``MatMulNBitsQuantizer`` itself is not used: it needs the ``onnx_ir`` package.
- ``int4-a8`` / ``int8-a8``: the same weights at ``accuracy_level`` 4: A quantized to int8 per block
  inside the call, integer dot products (the fast CPU path; 8-bit has no fast fp32-compute kernel).
- ``int8-dyn``: ``onnxruntime.quantization.quantize_dynamic`` (int8 weight, one scale):
  DynamicQuantizeLinear on A, then MatMulInteger.

The quantized initializers are read back from the cached file and dequantized in numpy for the
float64 check, so the check tests the kernel, not the quantizer.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path

import numpy as np

from rwkvprobe.backends import TOLERANCE, Backend, Workload, activation, check_runner
from rwkvprobe.backends.onnxgen import DEFAULT_OPSET, NP_DTYPES, ModelSpec, build_model, write_model
from rwkvprobe.model.quant import DEFAULT_BLOCK_SIZE, FORMATS, activation_as_seen, dequantize_nbits, dequantize_per_tensor

#: onnxruntime's quantizer default: asymmetric, a zero point per block
NBITS_SYMMETRIC = False
#: bumped whenever the conversion changes, so no stale cached model is reused
QUANT_VERSION = 1
_META = "rwkvprobe.quantized"


def quantized_filename(workload: Workload) -> str:
    fmt = workload.weight_format
    block = f"_b{workload.block_size}" if fmt.blockwise else ""
    return f"matmul_m{workload.m}_k{workload.k}_n{workload.n}_{fmt.name}{block}.onnx"


def _settings(workload: Workload, spec: ModelSpec) -> str:
    """What a cached quantized file must have been made with (stored in its metadata)."""
    fmt = workload.weight_format
    parts = [f"v{QUANT_VERSION}", fmt.name, f"seed={spec.seed}", f"k={spec.k}", f"n={spec.n}", f"m={spec.m}"]
    if fmt.op == "MatMulNBits":
        parts += [f"block={workload.block_size}", f"acc={fmt.accuracy_level}", f"sym={int(NBITS_SYMMETRIC)}"]
    return ";".join(parts)


#: the thread count of this process's one onnxruntime thread pool (session_options); 0 where none could be made
_POOL_THREADS: list[int] = []


def pool_threads() -> int | None:
    """The thread count of the onnxruntime thread pool every session of this process shares, or None (none yet, or
    this onnxruntime cannot make one: each session then has its own pool, without spinning)."""
    return _POOL_THREADS[0] if _POOL_THREADS and _POOL_THREADS[0] else None


def _make_pool(threads: int) -> None:
    """The process's one onnxruntime thread pool, of ``threads`` threads, unless it has one already."""
    if not _POOL_THREADS:
        from onnxruntime.capi import _pybind_state

        try:
            _pybind_state.set_global_thread_pool_sizes(threads, 1)
            _POOL_THREADS.append(threads)
        except Exception:  # an onnxruntime without it: each session its own pool, without spinning
            _POOL_THREADS.append(0)


def session_options(threads: int | None = None):
    """The options of every onnxruntime session rwkvprobe makes: all on one thread pool for the process, made with
    ``threads`` threads by the first session that names a count (a session with None, untimed, takes the pool where
    there is one: once there is, onnxruntime refuses a session of its own pool).

    A point's weight copies are one session each, and a session has its own pool by default: after its call, its
    workers spin (onnxruntime's default), so the next copy's call, on another pool, found 2 vCPUs taken by spinners. On
    the 2-vCPU Xeon VM a cold fp32 1024x4096 point read 2.1-2.7 ms a call with a spread (IQR/median) of 1.2-1.7,
    calls of 0.8 and 10 ms mixed; with one pool, as a deployed model's one session has, 0.8-1.0 ms, spread 0.2 (warm
    back-to-back calls alike: 115 us either way). Without spinning instead, each call paid the worker's wake-up (a warm
    1024x1024 call 177 us against 115)."""
    import onnxruntime as ort

    if threads is not None:
        _make_pool(threads)
    opts = ort.SessionOptions()
    if pool_threads():
        opts.use_per_session_threads = False
    elif threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


#: Arm CPUs with FP16 vector arithmetic (ARMv8.2: the RK3588's Cortex-A76 and A55) run onnxruntime's fp16
#: MatMul with fp16 accumulation: its rounding error grows with sqrt(K), past the fp32-accumulation tolerance
#: (seen in CI's emulated aarch64 step: 6.0e-3 on M=1, 768x768, against 5e-3).
ARM_MACHINES = ("aarch64", "arm64", "armv8l")


def fp16_accumulation_tolerance(k: int, machine: str | None = None) -> float | None:
    """The check's bound for an fp16 matmul over K terms where onnxruntime accumulates in fp16, else None.

    The rounding error of a K-term fp16 sum of random-signed products is about 2^-11 * sqrt(K/2) of the
    typical output (a random walk of one half-ulp per addition); 2^-11 * sqrt(K) of the largest output
    leaves room for the largest of N outputs, and stays far below what a wrong kernel gives (~1)."""
    import platform

    if (machine or platform.machine()).lower() not in ARM_MACHINES:
        return None
    return max(TOLERANCE["fp16"], 2.0**-11 * k**0.5)


def float_model_filename(spec: ModelSpec) -> str:
    """The file onnxruntime runs a float workload from: the model of ``spec`` with its weight in a ``.data`` file
    beside it (external data), which onnxruntime maps instead of parsing it out of the protobuf. Made as a session
    loads: for rwkv-1b5's fp32 head (0.54 GB) 0.7 s against 3.2 s with the weight inside the .onnx, whose bytes
    were copied three times into fresh memory (protobuf, tensor, prepacked), at 2.5 s a GB on the 2-vCPU VMs."""
    return spec.filename.removesuffix(".onnx") + ".ext.onnx"


def has_float_model(spec: ModelSpec, folder: Path) -> bool:
    """Whether ``folder`` holds the external-data model of ``spec``, graph and weight file both."""
    path = folder / float_model_filename(spec)
    return path.is_file() and external_data(path) is not None


def float_model(spec: ModelSpec, folder: Path, opset: int = DEFAULT_OPSET) -> Path:
    """The external-data model of ``spec`` in ``folder`` (float_model_filename), written when not there yet."""
    if not has_float_model(spec, folder):
        write_model(spec, folder, opset, filename=float_model_filename(spec), external=True)
    return folder / float_model_filename(spec)


def data_file(path: Path) -> Path:
    """Where the weight of the external-data model at ``path`` is kept (float_model)."""
    return path.with_name(path.name + ".data")


def external_data(path: Path) -> Path | None:
    """The weight file of an external-data model written by float_model, or None (a model with its weight inside)."""
    data = data_file(path)
    return data if data.is_file() else None


def _mapped(path: Path) -> bool | None:
    """Whether this process has ``path`` mapped into memory (Linux's /proc/self/maps); None where it cannot tell."""
    try:
        name = str(path.resolve())
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return any(line.rstrip("\n").endswith(" " + name) for line in f)
    except OSError:
        return None


class OrtRunner:
    def __init__(self, workload: Workload, copies: int, path: Path, threads: int | None):
        """``threads`` None: an untimed session (session_options)."""
        import onnxruntime as ort

        opts = session_options(threads)
        # Each session holds its own copy of the weight: the cold-cache rotation.
        self.sessions = [ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
                         for _ in range(copies)]
        #: the private weight buffers of copies 1.. where the sessions read the weight from the mapped file
        self.private_weights: list[np.ndarray] = []
        data = external_data(path)
        if copies > 1 and data is not None and _mapped(data) is not False:
            # onnxruntime reads this kernel's weight where it mapped the file (no prepacked or converted copy of
            # its own, as its fp32 and x86 fp16 MatMul make): every session would read the same pages, one copy
            # in effect. Copies 1.. get the weight in a buffer of their own instead
            self.sessions[1:] = [self._private_session(workload, path, data, threads) for _ in range(copies - 1)]
        self.workload = workload
        self.path = path
        self.dtype = np.float32 if workload.quantized else NP_DTYPES[workload.dtype]
        self.a = activation(workload.m, workload.k).astype(self.dtype)
        self.feeds = {"A": self.a}
        self.outs: list[np.ndarray | None] = [None] * copies
        self.copies = copies
        self.k, self.n = workload.k, workload.n
        if workload.dtype == "fp16":
            self.tolerance = fp16_accumulation_tolerance(workload.k)  # None: the dtype's own (check_runner)

    def _private_session(self, workload: Workload, path: Path, data: Path, threads: int | None):
        """A session of the model at ``path`` whose weight is a private copy of ``data`` (kept alive with it)."""
        import onnx
        import onnxruntime as ort

        model = onnx.load(str(path), load_external_data=False)
        (init,) = model.graph.initializer
        weight = np.fromfile(data, dtype=NP_DTYPES[workload.dtype]).reshape(tuple(init.dims))
        self.private_weights.append(weight)
        opts = session_options(threads)
        opts.add_external_initializers([init.name], [ort.OrtValue.ortvalue_from_numpy(weight)])
        return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])

    def run(self, i: int) -> None:
        self.outs[i] = self.sessions[i].run(None, self.feeds)[0]

    def output(self, i: int) -> np.ndarray:
        return np.asarray(self.outs[i], dtype=np.float64)

    def scale(self, i: int) -> float:
        return 1.0

    def inputs(self):
        if not self.workload.quantized:  # a float model is always float_model's: its weight in the .data file
            # the weight as the file onnxruntime loaded holds it (mapped: no fp16 rounding of the fp32 base again,
            # 0.9 s of a quick run of rwkv-1b5 in numpy's scalar conversion)
            return self.a, np.memmap(data_file(self.path), dtype=self.dtype, mode="r", shape=(self.k, self.n))
        w = self.workload
        return activation_as_seen(self.a, w.weight_format, w.block_size), read_quantized_weight(self.path)

    def close(self) -> None:
        self.sessions, self.outs, self.private_weights = [], [], []


# ------------------------------------------------------------------------------------------------
# Quantized models


def _initializers(model) -> dict:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def read_quantized_weight(path: Path) -> np.ndarray:
    """The fp32 W[K,N] that a quantized model's MatMulNBits or MatMulInteger node stands for."""
    import onnx

    model = onnx.load(str(path))
    inits = _initializers(model)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            zp = inits[node.input[3]] if len(node.input) > 3 and node.input[3] else None
            return dequantize_nbits(inits[node.input[1]], inits[node.input[2]], zp, attrs["bits"],
                                    attrs["block_size"], attrs["K"], attrs["N"])
        if node.op_type == "MatMulInteger":
            b = inits[node.input[1]]
            zp = inits[node.input[3]] if len(node.input) > 3 and node.input[3] else 0
            # quantize_dynamic rescales the int32 result by Mul(A_scale, B_scale): B_scale is the initializer
            scale = next(inits[i] for n2 in model.graph.node if n2.op_type == "Mul"
                         for i in n2.input if i in inits and inits[i].dtype == np.float32)
            if np.size(scale) != 1 or np.size(zp) != 1:
                raise ValueError(f"{path.name}: expected a per-tensor weight scale and zero point")
            return dequantize_per_tensor(b, float(np.ravel(scale)[0]), float(np.ravel(zp)[0]))
    raise ValueError(f"{path.name}: no MatMulNBits or MatMulInteger node")


def _nbits_model(src_model, workload: Workload):
    """The fp32 MatMul model with its weight quantized to a MatMulNBits node (as onnxruntime's
    DefaultWeightOnlyQuantizer writes it)."""
    from onnx import helper, numpy_helper
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    fmt = workload.weight_format
    (node,) = [n for n in src_model.graph.node if n.op_type == "MatMul"]
    w = _initializers(src_model)[node.input[1]].astype(np.float32, copy=False)
    k, n = w.shape
    bs, bits = workload.block_size, fmt.bits
    kb = -(-k // bs)
    kpack = 8 // bits
    if kb * bs != k:
        w = np.pad(w, ((0, kb * bs - k), (0, 0)))
    w = np.ascontiguousarray(w)
    packed = np.zeros((n, kb, bs // kpack), dtype=np.uint8)
    zero_points = np.zeros((n, -(-kb // kpack)), dtype=np.uint8)
    scales = np.zeros((n, kb), dtype=np.float32)
    quantize = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    quantize(packed, w, scales, zero_points, bs, n, kb * bs, NBITS_SYMMETRIC)
    del w
    name = node.input[1]
    inits = [numpy_helper.from_array(packed, f"{name}_Q{bits}"), numpy_helper.from_array(scales, f"{name}_scales")]
    inputs = [node.input[0], inits[0].name, inits[1].name]
    if not NBITS_SYMMETRIC:
        inits.append(numpy_helper.from_array(zero_points, f"{name}_zero_points"))
        inputs.append(inits[2].name)
    attrs = {"K": k, "N": n, "bits": bits, "block_size": bs}
    if fmt.accuracy_level:
        attrs["accuracy_level"] = fmt.accuracy_level
    qnode = helper.make_node("MatMulNBits", inputs, list(node.output), name=f"{node.name or 'MatMul'}_Q{bits}",
                             domain="com.microsoft", **attrs)
    graph = helper.make_graph([qnode], src_model.graph.name, list(src_model.graph.input),
                              list(src_model.graph.output), inits)
    opsets = [o for o in src_model.opset_import if o.domain not in ("com.microsoft",)]
    opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(graph, producer_name="rwkvprobe", opset_imports=opsets)
    model.ir_version = src_model.ir_version
    return model


def _dynamic_model(src: Path, tmp: Path):
    """onnxruntime.quantization.quantize_dynamic of the fp32 model (int8 weight, per tensor)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process the model is not for a one-node graph
    try:
        quantize_dynamic(src, tmp, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return onnx.load(str(tmp))


def _cached(path: Path, settings: str) -> bool:
    if not path.is_file():
        return False
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return any(p.key == _META and p.value == settings for p in model.metadata_props)


def write_quantized_model(workload: Workload, folder: Path, opset: int | None = None) -> Path:
    """The cached quantized model of a workload, converted from the fp32 model of the same shape."""
    import onnx


    spec = ModelSpec(workload.m, workload.k, workload.n, "fp32")
    final = folder / quantized_filename(workload)
    settings = _settings(workload, spec)
    if _cached(final, settings):
        return final
    src = float_model(spec, folder, opset or DEFAULT_OPSET)
    tmp = folder / f".{final.name}.tmp.onnx"
    try:
        if workload.weight_format.op == "MatMulNBits":
            model = _nbits_model(onnx.load(str(src)), workload)
        else:
            model = _dynamic_model(src, tmp)
        onnx.helper.set_model_props(model, {_META: settings})
        onnx.checker.check_model(model)
        onnx.save_model(model, str(tmp))
        del model
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


@functools.lru_cache(maxsize=None)
def _probe(scheme: str) -> str | None:
    """Run a tiny model of a quantized format once: None if onnxruntime runs it right here."""
    import tempfile


    w = Workload(1, 64, 16, FORMATS[scheme].dtype, scheme=scheme)
    try:
        with tempfile.TemporaryDirectory(prefix="rwkvprobe-ort-") as d:
            # untimed: no thread count, so that the process's pool is made by the first timed session, with the
            # run's count (this probe, first in an analyze run, made it a pool of 1 thread)
            runner = OrtRunner(w, 1, write_quantized_model(w, Path(d)), None)
            try:
                result = check_runner(w, runner)
            finally:
                runner.close()
    except Exception as e:  # an older onnxruntime without this kernel
        return f"onnxruntime cannot run {w.label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    if not result["ok"]:
        return f"onnxruntime's {w.label} gives wrong results here ({result['detail']})"
    return None


@functools.lru_cache(maxsize=None)
def fp16_weights_held_as() -> str:
    """The float type onnxruntime holds an fp16 MatMul's weight in here: ``fp16``, or ``fp32`` where it has no fp16
    MatMul kernel for this CPU. Then, as the session loads, it puts Casts around the MatMul (A to fp32, C back to
    fp16) and folds the cast of the constant weight into a new fp32 initializer (onnxruntime 1.32 on x86-64): its
    "fp16" reads 4 bytes a weight, as fp32 does. Read from the graph that onnxruntime optimizes a tiny fp16 MatMul
    into (saved once, untimed): the type of the weight its MatMul multiplies. ``fp16`` where that cannot be read (no
    onnxruntime here: nothing of it is measured then)."""
    import tempfile

    try:
        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="rwkvprobe-ort-") as d:
            opts = session_options(None)
            opts.optimized_model_filepath = str(Path(d) / "optimized.onnx")
            opts.log_severity_level = 3  # no warning that a model optimized at this level is for this machine only
            ort.InferenceSession(build_model(ModelSpec(1, 64, 16, "fp16")).SerializeToString(), sess_options=opts,
                                 providers=["CPUExecutionProvider"])
            graph = onnx.load(opts.optimized_model_filepath).graph
    except Exception:
        return "fp16"
    types = {t.name: t.data_type for t in graph.initializer}
    weights = [types[i] for node in graph.node if node.op_type == "MatMul" for i in node.input if i in types]
    return "fp32" if weights and all(t == onnx.TensorProto.FLOAT for t in weights) else "fp16"


class OrtBackend(Backend):
    name = "onnxruntime"
    dtypes = ("fp32", "fp16", "int8", "int4", "int8-dyn", "int8-a8", "int4-a8")
    default_dtypes = ("fp32", "fp16")
    module = "onnxruntime"
    extra = "onnxruntime"
    formats = {"int4": "nbits4", "int8": "nbits8", "int8-dyn": "dynamic8", "int8-a8": "nbits8a8", "int4-a8": "nbits4a8"}
    #: measured by default for the verdict's smaller-weights what-if (decode shapes only): per width, the first
    #: format that runs here (the integer-dot-product paths first: the fast CPU kernels)
    whatif_dtypes = (("int8-a8", "int8"), ("int4-a8", "int4"))
    float_weights_from_file = True  # the float models' .data files (analyze writes them before the points)

    @classmethod
    def dtype_unavailable(cls, dtype: str) -> str | None:
        reason = super().dtype_unavailable(dtype)
        if reason or dtype not in cls.formats:
            return reason
        return _probe(cls.formats[dtype])

    @classmethod
    def workload(cls, m: int, k: int, n: int, dtype: str, block_size: int = DEFAULT_BLOCK_SIZE) -> Workload:
        """fp16 on a CPU where onnxruntime holds the weight as fp32 (fp16_weights_held_as): its bytes at fp32."""
        w = super().workload(m, k, n, dtype, block_size)
        held = fp16_weights_held_as() if dtype == "fp16" else dtype
        return dataclasses.replace(w, weight_dtype=held) if held != dtype else w

    def prepare(self, workload: Workload, copies: int, onnx_dir=None) -> OrtRunner:
        if onnx_dir is None:
            raise ValueError("the onnxruntime backend needs a folder for its ONNX models")
        folder = Path(onnx_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if workload.quantized:
            return OrtRunner(workload, copies, write_quantized_model(workload, folder), self.threads)
        # normally written beforehand (analyze's _write_models)
        spec = ModelSpec(workload.m, workload.k, workload.n, workload.dtype)
        return OrtRunner(workload, copies, float_model(spec, folder), self.threads)

    def describe(self) -> dict:
        import onnxruntime as ort

        arm = fp16_accumulation_tolerance(4096) is not None
        _make_pool(self.threads)  # described before its first session: the pool its sessions will share
        pool = pool_threads()
        return {"name": self.name, "threads": self.threads, "onnxruntime": ort.__version__,
                "providers": ["CPUExecutionProvider"],
                "thread_pool": (f"one pool of {pool} threads for every session of this process (as a deployed "
                                "model's one session has)" if pool else "a pool per session, without spinning")
                               + (f"; not the {self.threads} asked for: the process's pool was made first"
                                  if pool and pool != self.threads else ""),
                "fp16_weights_held_as": fp16_weights_held_as(),
                "fp16_check": ("fp16 accumulation on Arm: checked against 2^-11*sqrt(K) of the largest output"
                               if arm else "fp32 accumulation: checked against 5e-3 of the largest output"),
                "quantization": {"nbits_symmetric": NBITS_SYMMETRIC,
                                 "formats": {d: FORMATS[s].detail for d, s in self.formats.items()}}}

