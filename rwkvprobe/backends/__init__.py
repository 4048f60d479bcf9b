"""Matmul backends behind one small interface: prepare a workload, run it, check it, release it.

A backend prepares a :class:`Runner` for one :class:`Workload` (A[M,K] x W[K,N] at a dtype) with
``copies`` distinct weight buffers (the cold-cache rotation). Every buffer holds the same seeded
weight as the ONNX model of that shape (``onnxgen.weight_matrix``) times a known scale, so every
output can be checked against a float64 reference before its time counts.

Quantized dtypes (``int8``, ``int4``, ``int8-dyn``; see :mod:`rwkvprobe.model.quant`) keep fp32
activations and store the weight in a backend-specific *weight format* whose real bytes (scales and
zero points included) the :class:`Workload` counts. Build such workloads with
``Backend.workload(m, k, n, dtype, block_size)`` so that they carry the format that backend uses.
A quantized output is checked tightly against A x the dequantized weight; its error against the
original fp32 weight (quantization noise) is recorded apart, for information.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np

from rwkvprobe.backends.onnxgen import weight_matrix
from rwkvprobe.errors import InputError, MissingExtra
from rwkvprobe.model.quant import (
    ACTIVATION_BYTES,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_FORMATS,
    FORMATS,
    QUANT_DTYPES,
    WeightFormat,
)

#: bytes per element of activations and weights at each float dtype
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

#: every dtype a workload may have: the float ones, then the quantized weights (fp32 activations)
DTYPES = tuple(ELEMENT_BYTES) + QUANT_DTYPES

#: Relative error (max |out - ref| / max |ref|) allowed against the float64 reference computed from
#: the same inputs rounded to the dtype: fp32 accumulation, fp16/bf16 output rounding (2^-11, 2^-8)
#: plus accumulation order. Quantized dtypes are checked against A x the *dequantized* weight, so
#: quantization noise (6e-2 for int4, 4e-3 for int8, 5e-3 more for 8-bit activations) is not in the
#: budget: int8/int4 weight-only kernels compute in fp32 (measured errors ~1e-7..1e-6); int8-dyn,
#: int8-a8 and int4-a8 multiply integers exactly, and their reference replays the activation
#: quantization bit for bit (measured ~1e-7): 1e-3 leaves room for a rare rounding tie of one
#: activation, still 5x under their quantization noise.
#: ggml's quantized formats (q8_0, q5_1, q4_0, q4_k) are checked against A as ggml's own quantizer of
#: the vec_dot type gives it x the weights as ggml's own dequantizer gives them (measured ~1e-7; q5_1
#: ~3e-4: its q8_1 activation blocks carry their sum rounded to fp16): 1e-3 as for the -a8 formats.
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 3e-2, "int8": 1e-4, "int4": 1e-4, "int8-dyn": 1e-3,
             "int8-a8": 1e-3, "int4-a8": 1e-3, "q8_0": 1e-3, "q5_1": 1e-3, "q4_0": 1e-3, "q4_k": 1e-3}


class UnavailableDtype(ValueError):
    """A backend has no (working) kernel for a dtype or weight format here: never run as another."""


@dataclass(frozen=True)
class Workload:
    """A[M,K] x W[K,N] at a dtype.

    For a quantized dtype, ``scheme`` names its weight format (a key of ``quant.FORMATS``; empty:
    the dtype's default, ``quant.DEFAULT_FORMATS``) and ``block_size`` the weights per scale of a
    blockwise format. Float dtypes ignore both. ``weight_dtype``: the float type the backend really holds the
    weight in, where that is not ``dtype`` (onnxruntime's fp16 on a CPU without an fp16 MatMul kernel converts the
    weight to fp32 as the session loads): the bytes a call reads count at that type.
    """

    m: int
    k: int
    n: int
    dtype: str
    block_size: int = DEFAULT_BLOCK_SIZE
    scheme: str = ""
    weight_dtype: str = ""

    def __post_init__(self):
        if self.scheme and (self.scheme not in FORMATS or FORMATS[self.scheme].dtype != self.dtype):
            raise ValueError(f"weight format '{self.scheme}' does not store dtype '{self.dtype}'")
        if self.weight_dtype and (self.quantized or self.weight_dtype not in ELEMENT_BYTES):
            raise ValueError(f"a {self.dtype} weight cannot be held as '{self.weight_dtype}'")

    @property
    def quantized(self) -> bool:
        return self.dtype in QUANT_DTYPES

    @property
    def weight_format(self) -> WeightFormat | None:
        """The weight format of a quantized workload; None for float dtypes."""
        if not self.quantized:
            return None
        return FORMATS[self.scheme or DEFAULT_FORMATS[self.dtype]]

    @property
    def label(self) -> str:
        """What the weight really is: ``fp32``, or ``int4 (MatMulNBits, block 32)``."""
        fmt = self.weight_format
        return fmt.label(self.block_size) if fmt else self.dtype

    @property
    def activation_bytes(self) -> int:
        """Bytes per element of A and C."""
        return ACTIVATION_BYTES if self.quantized else ELEMENT_BYTES[self.dtype]

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n

    @property
    def weight_bytes(self) -> int:
        """Bytes of the stored weight: for quantized formats including scales, zero points, padding."""
        fmt = self.weight_format
        if fmt:
            return fmt.weight_bytes(self.k, self.n, self.block_size)
        return self.k * self.n * ELEMENT_BYTES[self.weight_dtype or self.dtype]

    @property
    def bytes_per_weight(self) -> float:
        return self.weight_bytes / (self.k * self.n)

    @property
    def bytes_moved(self) -> int:
        """Lower bound on DRAM traffic: the weight once, A read once, C written once."""
        e = self.activation_bytes
        return self.weight_bytes + self.m * self.k * e + self.m * self.n * e

    @property
    def key(self) -> str:
        base = f"m{self.m}_k{self.k}_n{self.n}_{self.dtype}"
        fmt = self.weight_format
        if fmt:
            base += f"_{fmt.name}" + (f"_b{fmt.fixed_block or self.block_size}" if fmt.blockwise else "")
        return base


class Runner(Protocol):
    copies: int

    def run(self, i: int) -> None:
        """Compute A x W_i (the timed call)."""

    def output(self, i: int) -> np.ndarray:
        """The last result of copy i as float64 [M, N] (not timed)."""

    def scale(self, i: int) -> float:
        """W_i = scale(i) * base weight."""

    def inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """A and weight copy 0 (scale 1) exactly as this backend rounded them, for the float64 reference.

        Returned in their own dtype (fp32 for bf16): the reference widens them block by block.
        Quantized dtypes: A as the kernel multiplies it (fp32, or float64 after a dynamic
        quantization) and the weight dequantized from what the backend stores (fp32 [K,N]).
        """

    def close(self) -> None:
        """Release buffers and sessions."""


class Backend:
    """Base class. Subclasses set ``name``, ``dtypes`` and implement ``prepare``.

    Every subclass's ``prepare`` first refuses (:class:`UnavailableDtype`) a dtype the backend does
    not offer here, or a quantized workload built for another weight format: a dtype without a
    kernel is reported, never run as something else.
    """

    name = "base"
    dtypes: tuple[str, ...] = ()
    default_dtypes: tuple[str, ...] = ()
    #: quantized formats measured by default (decode shapes only) for the smaller-weights what-if: one group
    #: per width, the first format of a group that runs here is measured (see analyze.plan_whatif)
    whatif_dtypes: tuple[tuple[str, ...], ...] = ()
    module = ""  # the package it needs
    extra = ""  # the rwkvprobe extra that installs it
    opt_in = False  # True: measured only when named in --backends, never by default
    #: what each dtype really is on this backend, shown next to its numbers
    notes: dict[str, str] = {}
    #: quantized dtype -> the weight format (key of quant.FORMATS) this backend stores it in
    formats: dict[str, str] = {}
    #: True where a float workload's weight comes from a model file written beforehand, not from base_weight
    float_weights_from_file = False

    def __init__(self, threads: int):
        self.threads = threads

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        impl = cls.__dict__.get("prepare")
        if impl is not None and not getattr(impl, "_checks_dtype", False):
            @functools.wraps(impl)
            def prepare(self, workload, copies, onnx_dir=None):
                self.require(workload)
                return impl(self, workload, copies, onnx_dir)

            prepare._checks_dtype = True
            cls.prepare = prepare

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when usable here, else why not (one line)."""
        if cls.module and importlib.util.find_spec(cls.module) is None:
            return f"'{cls.module}' is not installed (pip install 'rwkvprobe[{cls.extra}]')"
        return None

    @classmethod
    def dtype_unavailable(cls, dtype: str) -> str | None:
        """None when this backend runs ``dtype`` here, else why not (one line)."""
        if dtype not in cls.dtypes:
            if dtype not in DTYPES:
                return f"unknown dtype '{dtype}' (expected one of {', '.join(DTYPES)})"
            return f"{cls.name} has no {dtype} kernel"
        return cls.unavailable_reason()

    @classmethod
    def usable_dtypes(cls) -> tuple[str, ...]:
        """The dtypes of ``dtypes`` that run here (quantized kernels are probed once)."""
        return tuple(d for d in cls.dtypes if cls.dtype_unavailable(d) is None)

    @classmethod
    def weight_format(cls, dtype: str) -> WeightFormat | None:
        """How this backend stores a quantized dtype; None for float dtypes."""
        if dtype not in QUANT_DTYPES:
            return None
        return FORMATS[cls.formats.get(dtype, DEFAULT_FORMATS[dtype])]

    @classmethod
    def workload(cls, m: int, k: int, n: int, dtype: str, block_size: int = DEFAULT_BLOCK_SIZE) -> Workload:
        """The workload of this backend at ``dtype``: a quantized one carries this backend's format."""
        fmt = cls.weight_format(dtype)
        return Workload(m, k, n, dtype, block_size, fmt.name if fmt else "")

    @classmethod
    def format_label(cls, dtype: str, block_size: int = DEFAULT_BLOCK_SIZE) -> str:
        """What ``dtype`` is on this backend: ``int4 (MatMulNBits, block 32)``; a float dtype: itself."""
        fmt = cls.weight_format(dtype)
        return fmt.label(block_size) if fmt else dtype

    def require(self, workload: Workload) -> None:
        """Raise UnavailableDtype unless this backend can run ``workload`` as it is described."""
        reason = self.dtype_unavailable(workload.dtype)
        if reason:
            raise UnavailableDtype(reason)
        fmt = self.weight_format(workload.dtype)
        if fmt:
            if workload.weight_format != fmt:
                raise UnavailableDtype(
                    f"{self.name} stores {workload.dtype} as {fmt.label(workload.block_size)}, not as "
                    f"{workload.label}: build the workload with backend.workload(...)")
            try:
                fmt.check_block_size(workload.block_size)
            except ValueError as e:
                raise UnavailableDtype(f"{self.name}: {e}") from None

    @classmethod
    def reads_base_weight(cls, dtype: str) -> bool:
        """Whether preparing or checking a ``dtype`` workload reads base_weight, the seeded fp32 weight this process
        keeps (analyze frees it before the points that do not: the fp32 head of a 1.5B is 0.5 GB). A quantized check
        does (its error against the fp32 product, for information)."""
        return not cls.float_weights_from_file or dtype in QUANT_DTYPES

    def prepare(self, workload: Workload, copies: int, onnx_dir=None) -> Runner:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict:
        """Library versions and settings, recorded with the results."""
        return {"name": self.name, "threads": self.threads}


def _madvise_toggle() -> Callable[[bool], bool] | None:
    """numpy's switch for madvise(MADV_HUGEPAGE) on its new large arrays (returns the previous setting); None where
    this numpy has none."""
    for where in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(where)._set_madvise_hugepage
        except (ImportError, AttributeError):
            continue
    return None


_MADVISE = _madvise_toggle()


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """numpy's new arrays on the kernel's small (4 KiB) pages while a point's weights are made and checked: no
    madvise for transparent huge pages, which numpy asks for on arrays of 4 MB and more.

    Why: every backend's weights then sit on the pages its own allocator gives them (torch, ggml and onnxruntime ask
    for no huge pages), numpy's as well; and huge pages new to a process cost 10x more to touch on a VM whose balloon
    hands freed memory back to the host (this project's: 537 MB filled in 2.9-4.3 s on huge pages, 0.3-0.4 s on
    small ones; rwkv-1b5's fp32 head took 3.5-6 s to generate, a tenth of a quick run). Streaming that head in a numpy
    GEMV took 2% longer from small pages here (paired median of 15, 16.7 against 17.1 ms). The bandwidth probe keeps
    numpy's default: its ceiling is the most the machine streams. Heap memory glibc gives again keeps the mark numpy
    put on it earlier, whatever the new array's size (a 64 MB base weight made here held 30 MiB of huge pages late in
    CI's test process, none in a fresh one), so numpy's large arrays that come and go in a run are made here too (the
    eviction buffer, the kept references)."""
    if _MADVISE is None:
        yield
        return
    before = _MADVISE(False)
    try:
        yield
    finally:
        _MADVISE(before)


def prepare_weights(backend: "Backend", workload: Workload, copies: int, onnx_dir=None) -> Runner:
    """``backend.prepare`` on small pages (small_pages)."""
    with small_pages():
        return backend.prepare(workload, copies) if onnx_dir is None else backend.prepare(workload, copies, onnx_dir)


class BaseWeights:
    """``base_weight(k, n)``: the seeded fp32 weight of shape (K, N), kept while consecutive workloads share the
    shape (one at a time). Read-only: runners make their own copies.

    It also keeps what generating each shape cost this process (``seconds``): the pages of a large weight are most of
    the cost where memory is new to the process (on this project's VM, whose balloon hands freed memory back to the
    host, rwkv-1b5's 0.5 GB fp32 head took 0.6-1.0 s on small pages, 3.5-6 s on huge ones), and analyze plans
    around it: the points put off that read a costly weight are timed before it is freed (analyze._next_point), and a
    recheck's cost counts it (analyze._budget_has)."""

    def __init__(self) -> None:
        self._shape: tuple[int, int] | None = None
        self._weight: np.ndarray | None = None
        self._seconds: dict[tuple[int, int], float] = {}

    def __call__(self, k: int, n: int) -> np.ndarray:
        if self._shape != (k, n) or self._weight is None:
            self.cache_clear()  # the old weight's pages go back before the new one takes its own
            t0 = time.perf_counter()
            with small_pages():
                w = weight_matrix(k, n, "fp32")
            w.setflags(write=False)
            self._seconds[(k, n)] = time.perf_counter() - t0
            self._shape, self._weight = (k, n), w
        return self._weight

    def cache_clear(self) -> None:
        self._shape = self._weight = None

    def holds(self, k: int, n: int) -> bool:
        """Whether the (K, N) weight is kept now."""
        return self.kept() == (k, n)

    def kept(self) -> tuple[int, int] | None:
        """The (K, N) of the weight kept now (None: none)."""
        return self._shape if self._weight is not None else None

    def seconds(self, k: int, n: int) -> float:
        """What generating the (K, N) weight cost the last time this process did (0 if never)."""
        return self._seconds.get((k, n), 0.0)


base_weight = BaseWeights()


def activation(m: int, k: int) -> np.ndarray:
    """The seeded input A[M,K] used by every backend (fp32; backends cast it to their dtype)."""
    rng = np.random.default_rng(12345 + 7 * m + k)
    return rng.standard_normal((m, k), dtype=np.float32)


def copy_scale(i: int) -> float:
    """Weight copy i is the base weight times this: 1, 1/2, 2, 1, ... (exact in fp16/bf16).

    Copy 0 is the base weight itself, so the reference needs no rescaled copy of it.
    """
    return (1.0, 0.5, 2.0)[i % 3]


#: up to this many rows of A the reference is numpy's einsum in float64 (it widens W a few thousand elements at a time
#: as it reads it), past it BLAS on W widened a column block at a time. Measured on a 2-vCPU Zen 3 VM: at M=1 the
#: einsum took 79 ms against 225 for rwkv-1b5's fp32 head (2048x65536) and 227 against 1738 at fp16, and 43 against
#: 145 for an fp16 8192x2048; at M=4 they were even; at M=16 the einsum was 6x slower
EINSUM_ROWS = 4


def reference(workload: Workload, a_cast: np.ndarray, w_cast: np.ndarray, block: int = 4096) -> np.ndarray:
    """float64 A x W from the inputs as the backend saw them (already rounded to its dtype).

    Every product and sum in float64; a large weight is never held whole in float64.
    """
    if a_cast.shape[0] <= EINSUM_ROWS:
        return np.einsum("mk,kn->mn", a_cast, w_cast, dtype=np.float64)
    a64 = a_cast.astype(np.float64)
    out = np.empty((a_cast.shape[0], w_cast.shape[1]), dtype=np.float64)
    for j in range(0, w_cast.shape[1], block):
        out[:, j:j + block] = a64 @ w_cast[:, j:j + block].astype(np.float64)
    return out


class References:
    """float64 references (``reference``) of the BLAS path (more than EINSUM_ROWS rows), kept with copies of the
    inputs they were computed from, and given again for inputs equal to those, element for element: the fp32
    backends' peak-compute shapes and prefill points see the same A and W (numpy, torch and onnxruntime hold the
    seeded weight as it is), and a 512x2048x4096 reference took 0.3-0.6 s of each backend's ceilings on a 2-vCPU
    VM. Inputs whose W is over ``max_weight_bytes`` are not kept (a head's copy would cost more than it saves), nor
    more than ``max_bytes`` in all (the oldest go first)."""

    def __init__(self, max_weight_bytes: int = 64 * 2**20, max_bytes: int = 112 * 2**20) -> None:
        self.max_weight_bytes, self.max_bytes = max_weight_bytes, max_bytes
        self._kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (A, W, reference), oldest first
        self.computed = 0  # references computed (the kept ones given again are not counted)

    def __call__(self, workload: Workload, a_cast: np.ndarray, w_cast: np.ndarray) -> np.ndarray:
        if a_cast.shape[0] <= EINSUM_ROWS or w_cast.nbytes > self.max_weight_bytes:
            self.computed += 1
            return reference(workload, a_cast, w_cast)
        for i, (a, w, ref) in enumerate(self._kept):
            # array_equal compares shapes and values, not dtypes (an fp16 W equals its fp32 widening)
            if (a.dtype == a_cast.dtype and w.dtype == w_cast.dtype and np.array_equal(a, a_cast)
                    and np.array_equal(w, w_cast)):
                self._kept.append(self._kept.pop(i))  # the most recently used last
                return ref
        ref = reference(workload, a_cast, w_cast)
        self.computed += 1
        ref.setflags(write=False)
        with small_pages():  # heap memory the weights may be given once these go (small_pages)
            self._kept.append((np.array(a_cast), np.array(w_cast), ref))
        while len(self._kept) > 1 and sum(a.nbytes + w.nbytes + r.nbytes for a, w, r in self._kept) > self.max_bytes:
            self._kept.pop(0)
        return ref

    def clear(self) -> None:
        self._kept = []


shared_reference = References()


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    denom = float(np.max(np.abs(ref))) or 1.0
    return float(np.max(np.abs(out.astype(np.float64) - ref))) / denom


def check_runner(workload: Workload, runner: Runner) -> dict:
    """Compare every copy's output (run once more, untimed) with the float64 reference.

    A quantized workload's reference is A x the dequantized weight (what the kernel must compute);
    ``quantization_rel_err`` adds, for information only, copy 0's error against the original fp32
    A x W: the price of the format, not a kernel fault.
    """
    a_cast, w_cast = runner.inputs()
    ref_base = shared_reference(workload, a_cast, w_cast)
    del w_cast
    worst = 0.0
    finite = True
    out0 = None
    for i in range(runner.copies):
        runner.run(i)
        out = runner.output(i)
        if out.shape != ref_base.shape:
            return {"ok": False, "rel_err": None, "tolerance": TOLERANCE[workload.dtype],
                    "detail": f"output shape {list(out.shape)}, expected {list(ref_base.shape)}"}
        finite = finite and bool(np.isfinite(out).all())
        worst = max(worst, relative_error(out, ref_base * runner.scale(i)))
        if i == 0:
            out0 = out
    tol = getattr(runner, "tolerance", None) or TOLERANCE[workload.dtype]  # a runner may know its own bound
    ok = finite and worst <= tol
    result = {"ok": ok, "rel_err": worst, "tolerance": tol,
              "detail": "" if ok else ("non-finite output" if not finite else f"relative error {worst:.2e} > {tol:.0e}")}
    if workload.quantized:
        original = shared_reference(workload, activation(workload.m, workload.k), base_weight(workload.k, workload.n))
        result["quantization_rel_err"] = relative_error(out0 / runner.scale(0), original)
        result["format"] = workload.label
    return result


# ------------------------------------------------------------------------------------------------
# Registry

_REGISTRY = {
    "numpy": ("rwkvprobe.backends.numpy_backend", "NumpyBackend"),
    "torch": ("rwkvprobe.backends.torch_backend", "TorchBackend"),
    "torch-linear": ("rwkvprobe.backends.torch_backend", "TorchLinearBackend"),
    "torch-cuda": ("rwkvprobe.backends.torch_backend", "TorchCudaBackend"),
    "onnxruntime": ("rwkvprobe.backends.ort_backend", "OrtBackend"),
    "ggml": ("rwkvprobe.backends.ggml_backend", "GgmlBackend"),
    "tinygrad": ("rwkvprobe.backends.tinygrad_backend", "TinygradBackend"),
    "rknnlite": ("rwkvprobe.backends.rknnlite_backend", "RknnLiteBackend"),
}
BACKEND_NAMES = tuple(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    if name not in _REGISTRY:
        raise InputError(f"unknown backend '{name}': expected one of {', '.join(BACKEND_NAMES)}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def get_backend(name: str, threads: int) -> Backend:
    """An instance of a usable backend; MissingExtra/InputError (one line) when it cannot run here."""
    cls = backend_class(name)
    reason = cls.unavailable_reason()
    if reason:
        if cls.module and importlib.util.find_spec(cls.module) is None:
            raise MissingExtra(cls.module, cls.extra, f"backend '{name}'")
        raise InputError(f"backend '{name}' cannot run here: {reason}")
    return cls(threads)


def available_backends() -> tuple[list[str], dict[str, str]]:
    """(usable backend names, {skipped name: why})."""
    usable, skipped = [], {}
    for name in BACKEND_NAMES:
        reason = backend_class(name).unavailable_reason()
        if reason:
            skipped[name] = reason
        else:
            usable.append(name)
    return usable, skipped
