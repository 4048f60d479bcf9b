"""ggml (the C library under llama.cpp and rwkv.cpp) on the CPU, through ggml-python's bindings.

What the engines run for one decoded token is ``ggml_mul_mat`` of a weight in one of ggml's formats
with an fp32 activation row: F32, F16, BF16, or a block format (Q8_0, Q5_1, Q4_0, Q4_K), whose mat-vec
kernel first quantizes the activation row itself to the format's ``vec_dot_type`` (Q8_0, Q8_1 or Q8_K)
and then runs the format's own dequantizing dot product (NEON/dotprod, AVX2, AVX-512, ... as the build
and the CPU allow). This backend runs exactly that:

- the weight W^T [N, K] (ggml's row-major layout, rows along K) quantized by ggml's own quantizer
  (``ggml_quantize_chunk``) once, then copied byte for byte into every cold-cache copy;
- one graph per copy (``ggml_mul_mat(W_i, A)``) built once, planned once (``ggml_graph_plan``) with the
  run's thread count on a persistent ggml threadpool, and computed per call (``ggml_graph_compute``),
  as the engines compute their graphs;
- checked against float64: A as ggml's own quantizer of the vec_dot type gives it, times W as ggml's own
  dequantizer (``to_float`` type trait) gives it back, so the check tests the kernel, not the format.

Bytes per weight come from ggml's type traits (``ggml_type_size`` / ``ggml_blck_size``), scales and
minimums included; the backend refuses to run when they disagree with ``quant.FORMATS``. K must be
whole blocks of the format (32, or 256 for Q4_K): ggml cannot store a row otherwise, and this backend
refuses such a shape with one line rather than padding it (an engine could not run it either).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util

import numpy as np

from rwkvprobe.backends import Backend, UnavailableDtype, Workload, activation, base_weight, check_runner
from rwkvprobe.model.quant import FORMATS, GGML_DTYPES

#: rwkvprobe dtype -> ggml type name (GGML_TYPE_<name>)
GGML_TYPES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q5_1": "Q5_1", "q4_0": "Q4_0",
              "q4_k": "Q4_K"}
#: ``--dtypes`` spellings ggml users write, accepted as the rwkvprobe dtype
ALIASES = {"f32": "fp32", "f16": "fp16", "q4_K": "q4_k", "Q4_K": "q4_k", "Q4_0": "q4_0", "Q8_0": "q8_0",
           "Q5_1": "q5_1"}
#: layer kinds rwkv.cpp stores quantized; the embedding, the head and RWKV-7's LoRA matrices stay f16
RWKV_CPP_QUANTIZE = ("att", "ffn", "custom")
#: the float type rwkv.cpp keeps those matrices in
RWKV_CPP_FLOAT = "fp16"
#: rows of W^T quantized per ggml_quantize_chunk call (bounds the temporary fp32 transpose)
_CHUNK_ELEMENTS = 1 << 23


def _ggml():
    import ggml

    return ggml


@functools.lru_cache(maxsize=None)
def _cpu_init() -> None:
    g = _ggml()
    if hasattr(g, "ggml_cpu_init"):
        g.ggml_cpu_init()


def ggml_type(dtype: str) -> int:
    return getattr(_ggml(), f"GGML_TYPE_{GGML_TYPES[dtype]}")


def type_traits(dtype: str) -> tuple[int, int]:
    """(weights per block, bytes per block) from ggml's type traits: bytes/weight = the ratio."""
    g = _ggml()
    t = ggml_type(dtype)
    return int(g.ggml_blck_size(t)), int(g.ggml_type_size(t))


def _float_ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def dequantize_rows(dtype_or_type, data: int, nrows: int, ncols: int) -> np.ndarray:
    """ggml rows (at address ``data``) of a type -> fp32 [nrows, ncols], with ggml's own ``to_float``.

    ``q8_1`` and ``q8_K`` (activation-only types) have no ``to_float`` in ggml: their blocks are read here
    (q8_1: fp16 d, fp16 s, 32 int8; q8_K: fp32 d, 256 int8, 16 int16 sums), value = d x q, with the block
    size checked against ggml's type traits.
    """
    g = _ggml()
    t = ggml_type(dtype_or_type) if isinstance(dtype_or_type, str) else int(dtype_or_type)
    n = nrows * ncols
    if t == g.GGML_TYPE_F32:
        return np.ctypeslib.as_array((ctypes.c_float * n).from_address(data)).reshape(nrows, ncols).copy()
    traits = g.ggml_get_type_traits(t).contents
    if traits.to_float:
        out = np.empty((nrows, ncols), dtype=np.float32)
        traits.to_float(ctypes.c_void_p(data), _float_ptr(out), n)
        return out
    blck, size = int(g.ggml_blck_size(t)), int(g.ggml_type_size(t))
    raw = np.ctypeslib.as_array((ctypes.c_uint8 * (n // blck * size)).from_address(data)).reshape(-1, size)
    if t == g.GGML_TYPE_Q8_1 and (blck, size) == (32, 36):
        d, q = raw[:, 0:2].copy().view(np.float16).astype(np.float32), raw[:, 4:].view(np.int8)
    elif t == g.GGML_TYPE_Q8_K and (blck, size) == (256, 292):
        d, q = raw[:, 0:4].copy().view(np.float32), raw[:, 4:260].view(np.int8)
    else:
        raise UnavailableDtype(f"ggml type {g.ggml_type_name(t).decode()} has no dequantizer here")
    return (q.astype(np.float32) * d).reshape(nrows, ncols)


def activation_as_seen(dtype: str, a: np.ndarray) -> np.ndarray:
    """A [M,K] fp32 as ggml's mat-vec for ``dtype`` multiplies it: converted to the format's
    ``vec_dot_type`` by ggml's own ``from_float`` (the kernel's), then read back (fp32)."""
    g = _ggml()
    vt = g.ggml_get_type_traits_cpu(ggml_type(dtype)).contents.vec_dot_type
    if vt == g.GGML_TYPE_F32:
        return a
    m, k = a.shape
    row = int(g.ggml_row_size(vt, k))
    buf = (ctypes.c_uint8 * (row * m))()
    from_float = g.ggml_get_type_traits_cpu(vt).contents.from_float
    a = np.ascontiguousarray(a, dtype=np.float32)
    for i in range(m):
        from_float(_float_ptr(a[i]), ctypes.c_void_p(ctypes.addressof(buf) + i * row), k)
    return dequantize_rows(vt, ctypes.addressof(buf), m, k)


#: rows of W each tile of a transposed copy reads: numpy's plain copy of W[:, j:j+s].T strides down whole columns
#: (1.0 s for rwkv-1b5's 0.5 GB head, in every ggml series); tiles of 16 rows, 0.27 s
_TILE_ROWS = 16


def _transposed(cols: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``cols.T``, copied in tiles of _TILE_ROWS rows of ``cols``."""
    k, n = cols.shape
    out = np.empty((n, k), dtype=cols.dtype)
    for i in range(0, k, _TILE_ROWS):
        out[:, i:i + _TILE_ROWS] = cols[i:i + _TILE_ROWS].T
    return out


def quantize_into(dtype: str, w: np.ndarray, dst: int) -> int:
    """W[K,N] fp32 -> W^T [N,K] in ggml's ``dtype`` at address ``dst`` (ggml_quantize_chunk); bytes written."""
    g = _ggml()
    t = ggml_type(dtype)
    k, n = w.shape
    row = int(g.ggml_row_size(t, k))
    step = max(1, _CHUNK_ELEMENTS // k)
    written = 0
    w = np.asarray(w, dtype=np.float32)
    for j in range(0, n, step):
        rows = _transposed(w[:, j:j + step])
        written += int(g.ggml_quantize_chunk(t, _float_ptr(rows), ctypes.c_void_p(dst + j * row), 0,
                                             rows.shape[0], k, None))
    return written


class GgmlRunner:
    def __init__(self, workload: Workload, copies: int, threads: int, threadpool):
        g = _ggml()
        _cpu_init()
        self.g = g
        self.workload, self.copies = workload, copies
        m, k, n = workload.m, workload.k, workload.n
        t = ggml_type(workload.dtype)
        blck, _ = type_traits(workload.dtype)
        if k % blck:
            raise UnavailableDtype(f"ggml {GGML_TYPES[workload.dtype]} stores rows in blocks of {blck} weights: "
                                   f"K={k} is not a multiple of {blck} (ggml cannot store this weight; not padded)")
        row = int(g.ggml_row_size(t, k))
        self.weight_bytes = row * n
        if self.weight_bytes != workload.weight_bytes:
            raise UnavailableDtype(f"ggml {GGML_TYPES[workload.dtype]}: ggml stores {self.weight_bytes} bytes for "
                                   f"{k}x{n}, rwkvprobe counts {workload.weight_bytes} (quant.FORMATS disagrees "
                                   "with ggml's type traits)")
        over = g.ggml_tensor_overhead()
        graph = g.ggml_graph_overhead_custom(8, False)
        mem = copies * (self.weight_bytes + over + m * n * 4 + over + graph + 256) + m * k * 4 + over + (1 << 16)
        self.ctx = g.ggml_init(g.ggml_init_params(mem_size=mem, mem_buffer=None, no_alloc=False))
        if not self.ctx:
            raise MemoryError(f"ggml_init could not allocate {mem} bytes")
        self.a_np = activation(m, k)
        self.a = g.ggml_new_tensor_2d(self.ctx, g.GGML_TYPE_F32, k, m)
        ctypes.memmove(g.ggml_get_data(self.a), self.a_np.ctypes.data, self.a_np.nbytes)
        self.weights, self.outs, self.graphs, self.plans = [], [], [], []
        work = 0
        for i in range(copies):
            w = g.ggml_new_tensor_2d(self.ctx, t, k, n)
            if i == 0:
                written = quantize_into(workload.dtype, base_weight(k, n), g.ggml_get_data(w))
                if written != self.weight_bytes:
                    raise UnavailableDtype(f"ggml_quantize_chunk wrote {written} bytes, expected {self.weight_bytes}")
            else:  # the same bytes in a distinct buffer: the cold-cache rotation
                ctypes.memmove(g.ggml_get_data(w), g.ggml_get_data(self.weights[0]), self.weight_bytes)
            out = g.ggml_mul_mat(self.ctx, w, self.a)
            gf = g.ggml_new_graph_custom(self.ctx, 8, False)
            g.ggml_build_forward_expand(gf, out)
            plan = g.ggml_graph_plan(gf, threads, threadpool)
            work = max(work, int(plan.work_size))
            self.weights.append(w)
            self.outs.append(out)
            self.graphs.append(gf)
            self.plans.append(plan)
        self.work = (ctypes.c_uint8 * max(work, 1))()
        for plan in self.plans:
            plan.work_data = ctypes.cast(self.work, ctypes.POINTER(ctypes.c_uint8))
        self._calls = [(gf, ctypes.byref(plan)) for gf, plan in zip(self.graphs, self.plans)]
        self._compute = g.ggml_graph_compute
        self.status = [0] * copies

    def run(self, i: int) -> None:
        gf, plan = self._calls[i]
        self.status[i] = self._compute(gf, plan)

    def output(self, i: int) -> np.ndarray:
        if self.status[i] != 0:
            raise RuntimeError(f"ggml_graph_compute returned status {self.status[i]}")
        m, n = self.workload.m, self.workload.n
        data = self.g.ggml_get_data(self.outs[i])
        return np.ctypeslib.as_array((ctypes.c_float * (m * n)).from_address(data)).reshape(m, n).astype(np.float64)

    def scale(self, i: int) -> float:
        return 1.0

    def inputs(self):
        """A as the kernel multiplies it, and W^T read back by ggml's dequantizer, as W [K,N] fp32."""
        w = self.workload
        a = activation_as_seen(w.dtype, self.a_np)
        data = self.g.ggml_get_data(self.weights[0])
        if w.dtype == "fp16":  # IEEE halves, read in place (an fp32 copy of rwkv-1b5's head was a run's peak memory)
            wt = np.ctypeslib.as_array((ctypes.c_uint16 * (w.n * w.k)).from_address(data)).view(np.float16)
            wt = wt.reshape(w.n, w.k)
        else:
            wt = dequantize_rows(w.dtype, data, w.n, w.k)
        return a, wt.T  # a view: the reference reads it in column blocks (copying the head's transpose took 3 s)

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self._calls, self.plans, self.graphs, self.outs, self.weights = [], [], [], [], []
            self.g.ggml_free(self.ctx)
            self.ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


@functools.lru_cache(maxsize=None)
def _probe(dtype: str) -> str | None:
    """None if this ggml build runs ``dtype`` right (a tiny mat-vec, checked); else why not."""

    g = _ggml()
    name = GGML_TYPES[dtype]
    if not hasattr(g, f"GGML_TYPE_{name}"):
        return f"this ggml build has no {name} type"
    t = ggml_type(dtype)
    cpu = g.ggml_get_type_traits_cpu(t).contents
    if not cpu.vec_dot and not cpu.from_float:
        return f"this ggml build has no CPU kernel for {name}"
    if dtype in GGML_DTYPES:
        fmt = FORMATS[dtype]
        if type_traits(dtype) != (fmt.fixed_block, fmt.block_bytes):
            return (f"ggml {name} blocks are {type_traits(dtype)} (weights, bytes), rwkvprobe expects "
                    f"{(fmt.fixed_block, fmt.block_bytes)}")
    w = GgmlBackend.workload(1, 256, 16, dtype)
    try:
        runner = GgmlRunner(w, 1, 1, None)
        try:
            result = check_runner(w, runner)
        finally:
            runner.close()
    except Exception as e:
        return f"ggml cannot run {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    if not result["ok"]:
        return f"ggml's {name} mat-vec gives wrong results here ({result['detail']})"
    return None


class GgmlBackend(Backend):
    name = "ggml"
    dtypes = ("fp32", "fp16", "bf16") + GGML_DTYPES
    default_dtypes = ("fp16", "q8_0", "q4_0")
    module = "ggml"
    extra = "ggml"
    formats = {d: d for d in GGML_DTYPES}
    #: a default run (ggml not named in --backends) measures decode shapes only, with a small budget
    default_tokens = (1,)
    #: per-series rule for the model-level figures: these kinds are stored quantized, the rest (and the
    #: embedding) at ``float_dtype``: rwkv.cpp's rule (embedding, head, RWKV-7 LoRA matrices stay f16)
    quantize_kinds = RWKV_CPP_QUANTIZE
    float_dtype = RWKV_CPP_FLOAT
    notes = {"fp16": "ggml F16 weights; the mat-vec converts the fp32 activation row to f16 itself",
             "bf16": "ggml BF16 weights; the activation row is converted to bf16 inside the call",
             **{d: FORMATS[d].detail for d in GGML_DTYPES}}

    def __init__(self, threads: int):
        super().__init__(threads)
        self._threadpool = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("ggml") is None:
            return "'ggml' is not installed (pip install 'rwkvprobe[ggml]')"
        try:
            g = _ggml()
            g.ggml_mul_mat, g.ggml_graph_plan, g.ggml_quantize_chunk, g.ggml_get_type_traits_cpu  # noqa: B018
        except (ImportError, OSError, AttributeError) as e:
            return f"ggml-python does not load here: {type(e).__name__}: {e}"[:300]
        return None

    @classmethod
    def dtype_unavailable(cls, dtype: str) -> str | None:
        reason = super().dtype_unavailable(dtype)
        return reason or _probe(dtype)

    def threadpool(self):
        """One persistent ggml threadpool of ``threads`` workers, as llama.cpp keeps (None for 1 thread)."""
        if self.threads > 1 and self._threadpool is None:
            g = _ggml()
            _cpu_init()
            params = g.ggml_threadpool_params_default(self.threads)
            self._threadpool = g.ggml_threadpool_new(ctypes.byref(params))
        return self._threadpool

    def prepare(self, workload: Workload, copies: int, onnx_dir=None) -> GgmlRunner:
        return GgmlRunner(workload, copies, self.threads, self.threadpool())

    def __del__(self):
        if getattr(self, "_threadpool", None):
            try:
                _ggml().ggml_threadpool_free(self._threadpool)
            except Exception:
                pass
            self._threadpool = None

    def describe(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version

        g = _ggml()
        try:
            v = version("ggml-python")
        except PackageNotFoundError:
            v = None
        feats = {f: bool(getattr(g, f"ggml_cpu_has_{f}")()) for f in
                 ("avx", "avx2", "f16c", "fma", "avx512", "avx512_vnni", "avx512_bf16", "avx_vnni", "neon",
                  "dotprod", "matmul_int8", "sve", "fp16_va", "llamafile")
                 if hasattr(g, f"ggml_cpu_has_{f}")}
        types = {}
        for d in self.dtypes:
            if hasattr(g, f"GGML_TYPE_{GGML_TYPES[d]}"):
                blck, size = type_traits(d)
                vt = g.ggml_get_type_traits_cpu(ggml_type(d)).contents.vec_dot_type
                types[d] = {"ggml_type": GGML_TYPES[d], "block": blck, "block_bytes": size,
                            "bytes_per_weight": size / blck, "vec_dot_type": g.ggml_type_name(vt).decode()}
        return {"name": self.name, "threads": self.threads, "ggml-python": v, "cpu_features": feats,
                "threadpool": "persistent ggml_threadpool" if self.threads > 1 else "none (1 thread)",
                "types": types, "quantize_kinds": list(self.quantize_kinds), "float_dtype": self.float_dtype,
                "quantize_rule": "rwkv.cpp: the embedding, the head and RWKV-7's LoRA matrices stay f16; "
                                 "att/ffn matrices take the quantized format",
                "non_matmul": "RWKV-7: one block's ops as a ggml graph (ggml_block.py); other versions: the "
                              "torch-timed fp32 block (nonmatmul.py) as a labelled stand-in"}
