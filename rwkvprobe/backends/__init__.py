"""Matmul backends behind one small interface: prepare a workload, run it, check it, release it.

A backend prepares a :class:`Runner` for one :class:`Workload` (A[M,K] x W[K,N] at a dtype) with
``copies`` distinct weight buffers (the cold-cache rotation). Every buffer holds the same seeded
weight as the ONNX model of that shape (``onnxgen.weight_matrix``) times a known scale, so every
output can be checked against a float64 reference before its time counts.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rwkvprobe.errors import InputError, MissingExtra

#: bytes per element of activations and weights at each float dtype
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

#: Relative error (max |out - ref| / max |ref|) allowed against the float64 reference computed from
#: the same inputs rounded to the dtype: fp32 accumulation, fp16/bf16 output rounding (2^-11, 2^-8)
#: plus accumulation order.
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 3e-2}


@dataclass(frozen=True)
class Workload:
    m: int
    k: int
    n: int
    dtype: str

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n

    @property
    def weight_bytes(self) -> int:
        return self.k * self.n * ELEMENT_BYTES[self.dtype]

    @property
    def bytes_moved(self) -> int:
        """Lower bound on DRAM traffic: the weight once, A read once, C written once."""
        e = ELEMENT_BYTES[self.dtype]
        return self.k * self.n * e + self.m * self.k * e + self.m * self.n * e

    @property
    def key(self) -> str:
        return f"m{self.m}_k{self.k}_n{self.n}_{self.dtype}"


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
        """

    def close(self) -> None:
        """Release buffers and sessions."""


class Backend:
    """Base class. Subclasses set ``name``, ``dtypes`` and implement ``prepare``."""

    name = "base"
    dtypes: tuple[str, ...] = ()
    default_dtypes: tuple[str, ...] = ()
    module = ""  # the package it needs
    extra = ""  # the rwkvprobe extra that installs it
    #: what each dtype really is on this backend, shown next to its numbers
    notes: dict[str, str] = {}

    def __init__(self, threads: int):
        self.threads = threads

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when usable here, else why not (one line)."""
        if cls.module and importlib.util.find_spec(cls.module) is None:
            return f"'{cls.module}' is not installed (pip install 'rwkvprobe[{cls.extra}]')"
        return None

    def prepare(self, workload: Workload, copies: int, onnx_dir=None) -> Runner:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict:
        """Library versions and settings, recorded with the results."""
        return {"name": self.name, "threads": self.threads}


@functools.lru_cache(maxsize=1)
def base_weight(k: int, n: int) -> np.ndarray:
    """The seeded fp32 weight of shape (K, N), kept while consecutive workloads share the shape.

    Read-only: runners make their own copies.
    """
    from rwkvprobe.onnxgen import weight_matrix

    w = weight_matrix(k, n, "fp32")
    w.setflags(write=False)
    return w


def activation(m: int, k: int) -> np.ndarray:
    """The seeded input A[M,K] used by every backend (fp32; backends cast it to their dtype)."""
    rng = np.random.default_rng(12345 + 7 * m + k)
    return rng.standard_normal((m, k), dtype=np.float32)


def copy_scale(i: int) -> float:
    """Weight copy i is the base weight times this: 1, 1/2, 2, 1, ... (exact in fp16/bf16).

    Copy 0 is the base weight itself, so the reference needs no rescaled copy of it.
    """
    return (1.0, 0.5, 2.0)[i % 3]


def reference(workload: Workload, a_cast: np.ndarray, w_cast: np.ndarray, block: int = 4096) -> np.ndarray:
    """float64 A x W from the inputs as the backend saw them (already rounded to its dtype).

    Computed in column blocks so a large weight is never held whole in float64.
    """
    a64 = a_cast.astype(np.float64)
    out = np.empty((a_cast.shape[0], w_cast.shape[1]), dtype=np.float64)
    for j in range(0, w_cast.shape[1], block):
        out[:, j:j + block] = a64 @ w_cast[:, j:j + block].astype(np.float64)
    return out


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    denom = float(np.max(np.abs(ref))) or 1.0
    return float(np.max(np.abs(out.astype(np.float64) - ref))) / denom


def check_runner(workload: Workload, runner: Runner) -> dict:
    """Compare every copy's output (run once more, untimed) with the float64 reference."""
    a_cast, w_cast = runner.inputs()
    ref_base = reference(workload, a_cast, w_cast)
    worst = 0.0
    finite = True
    for i in range(runner.copies):
        runner.run(i)
        out = runner.output(i)
        if out.shape != ref_base.shape:
            return {"ok": False, "rel_err": None, "tolerance": TOLERANCE[workload.dtype],
                    "detail": f"output shape {list(out.shape)}, expected {list(ref_base.shape)}"}
        finite = finite and bool(np.isfinite(out).all())
        worst = max(worst, relative_error(out, ref_base * runner.scale(i)))
    tol = TOLERANCE[workload.dtype]
    ok = finite and worst <= tol
    return {"ok": ok, "rel_err": worst, "tolerance": tol,
            "detail": "" if ok else ("non-finite output" if not finite else f"relative error {worst:.2e} > {tol:.0e}")}


# ------------------------------------------------------------------------------------------------
# Registry

_REGISTRY = {
    "numpy": ("rwkvprobe.backends.numpy_backend", "NumpyBackend"),
    "torch": ("rwkvprobe.backends.torch_backend", "TorchBackend"),
    "torch-cuda": ("rwkvprobe.backends.torch_backend", "TorchCudaBackend"),
    "onnxruntime": ("rwkvprobe.backends.ort_backend", "OrtBackend"),
    "tinygrad": ("rwkvprobe.backends.tinygrad_backend", "TinygradBackend"),
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
