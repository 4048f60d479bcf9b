"""The bandwidth probe's five STREAM kernels as compiled loops (numba), one fused pass each.

The loops below are plain Python; :func:`compiled` compiles them with numba on first use (importing numba costs a
few tenths of a second, the first compile a second or two; compiled code is cached on disk), so importing this
module costs nothing and works where numba does not. Each function releases the GIL
(``nogil=True``), so the probe's pinned worker threads stream memory in parallel, as OpenMP threads do in
the C reference (``bench/stream_ref.c``). Only the read kernel's sum may be reordered (``fastmath``), so
that LLVM vectorises it as the C reference's ``omp simd reduction`` does; the other kernels are plain
loops without fused multiply-adds, so their values equal numpy's bit for bit.

Why not numpy alone: triad ``a = b + s*c`` has no single numpy call, and two passes over cache-sized blocks
reached only 0.65-0.78 of C on an AVX2-only Zen 3 (issue 14); the fused loop here moves exactly the three
arrays STREAM counts, in one pass.

Prefetching loops: on the AVX2-only Zen 3 VM, gcc's plain loop for scale ``b = s*c`` moved 20.8-21.3 GB/s on one core
or 24.3-25.7, by where the loop's code sat (the same instructions, the loop starting 5-37 bytes into a 64-byte line
against 45-61: C's reference library sat in the fast place, numba's loop, like numpy's, in the slow one: 0.82-0.87 of
C, issue 14). A loop that asks for the line 2 KiB ahead of its reads (``prefetch``, LLVM's ``llvm.prefetch``; PRFM on
Arm, PREFETCHT0 on x86) moved 25.2-25.5 wherever it sat: copy 25.6 against C's 21.9, triad 24.9 against 24.0, add the
same. So the copy, scale, add and triad kernels come twice, the plain loop and the prefetching one (``*_ahead``),
and the probe takes them in turn, each counted in its own right (``bandwidth.kernel_methods``); where one is slower on
some CPU, the other's trials still stand. The read gets no prefetching twin (its reduction, vectorised with a
prefetch in it, ran at a third of the speed) but a loop over four parts of its array side by side
(``read_streams``, as a GEMV reads several rows at once): on one core of that VM 10-16% faster than the single
stream, on arrays 4x and 23x the cache alike.

Vector width: on a CPU with AVX-512, LLVM's default for some of them (AMD Zen 4: ``znver4``) is 512-bit vectors,
and streaming loops over DRAM ran slower that way. On one core of the Zen 4 dev VM, same process, alternating
call by call (134 MB arrays): add and triad moved 27-28 GB/s with 512-bit vectors against 33-35 GB/s with 256-bit
ones, read 29-31 against 34-35; copy was the same. gcc's loops showed the same (``-march=native`` against
``-march=native -mprefer-vector-width=256``). LLVM already prefers 256-bit vectors on Intel's AVX-512 server CPUs
(its ``prefer-256-bit`` tuning); :func:`compiled` asks for it on every x86-64 CPU with AVX-512
(:func:`numba_cpu_features`), unless the user set ``NUMBA_CPU_FEATURES`` or ``NUMBA_CPU_NAME`` themselves.
:func:`vector_tuning` says which width the kernels were compiled for.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from types import SimpleNamespace
from typing import Any

_OPTIONS: dict[str, Any] = dict(nogil=True, cache=True, boundscheck=False)
#: LLVM's tuning feature: vectorise with 256-bit vectors although the CPU has 512-bit ones
PREFER_256 = "+prefer-256-bit"
X86_64 = ("x86_64", "amd64")


def numba_cpu_features(machine: str, host_features: str) -> str | None:
    """``NUMBA_CPU_FEATURES`` for the kernels: the host's own features (LLVM's comma-separated ``+name``/``-name``
    list) with ``+prefer-256-bit`` added, on an x86-64 CPU with AVX-512; None elsewhere (numba's default: an
    AVX2-only or an Arm CPU has no wider vectors to avoid)."""
    features = [f for f in host_features.split(",") if f]
    if machine.lower() not in X86_64 or "+avx512f" not in features or PREFER_256 in features:
        return None
    return ",".join([*features, PREFER_256])


def _ask_for_256_bit_vectors() -> None:
    """Set NUMBA_CPU_FEATURES (see the module's note) before numba is first imported; nothing once numba is
    imported (its configuration is read then) or where the user chose the target themselves."""
    if "numba" in sys.modules or os.environ.get("NUMBA_CPU_FEATURES") or os.environ.get("NUMBA_CPU_NAME"):
        return
    try:
        import llvmlite.binding as llvm

        features = numba_cpu_features(platform.machine(), llvm.get_host_cpu_features().flatten())
    except Exception:  # llvmlite missing or unable to read the host: numba's default target
        return
    if features:
        os.environ["NUMBA_CPU_FEATURES"] = features


def vector_tuning() -> str:
    """What the kernels were compiled for: ``"256-bit vectors (LLVM prefer-256-bit)"`` where that tuning is in effect,
    else ``"numba's default for this CPU"``."""
    numba = sys.modules.get("numba")
    features = getattr(getattr(getattr(numba, "core", None), "config", None), "CPU_FEATURES", None) or ""
    return "256-bit vectors (LLVM prefer-256-bit)" if PREFER_256 in features.split(",") else "numba's default for this CPU"


def copy(a, c):  # compiled by compiled(); plain Python here
    for i in range(a.shape[0]):
        c[i] = a[i]


def scale(c, b, s):  # compiled by compiled(); plain Python here
    for i in range(c.shape[0]):
        b[i] = s * c[i]


def add(a, b, c):  # compiled by compiled(); plain Python here
    for i in range(a.shape[0]):
        c[i] = a[i] + b[i]


def triad(a, b, c, s):  # compiled by compiled(); plain Python here
    for i in range(a.shape[0]):
        a[i] = b[i] + s * c[i]


#: how far ahead of its reads a prefetching loop asks for memory: 256 float64, 2 KiB (32 lines of 64 bytes)
PREFETCH_ELEMENTS = 256
#: a prefetching loop's step: one 64-byte line of float64 per prefetch
LINE_ELEMENTS = 8


def prefetch(arr, index):  # compiled by compiled() into LLVM's prefetch of arr[index] (a hint: never faults); no-op here
    return None


def copy_ahead(a, c):  # compiled by compiled(); plain Python here
    n = a.shape[0]
    m = n - n % LINE_ELEMENTS
    for i in range(0, m, LINE_ELEMENTS):
        prefetch(a, i + PREFETCH_ELEMENTS)
        for j in range(i, i + LINE_ELEMENTS):
            c[j] = a[j]
    for j in range(m, n):
        c[j] = a[j]


def scale_ahead(c, b, s):  # compiled by compiled(); plain Python here
    n = c.shape[0]
    m = n - n % LINE_ELEMENTS
    for i in range(0, m, LINE_ELEMENTS):
        prefetch(c, i + PREFETCH_ELEMENTS)
        for j in range(i, i + LINE_ELEMENTS):
            b[j] = s * c[j]
    for j in range(m, n):
        b[j] = s * c[j]


def add_ahead(a, b, c):  # compiled by compiled(); plain Python here
    n = a.shape[0]
    m = n - n % LINE_ELEMENTS
    for i in range(0, m, LINE_ELEMENTS):
        prefetch(a, i + PREFETCH_ELEMENTS)
        prefetch(b, i + PREFETCH_ELEMENTS)
        for j in range(i, i + LINE_ELEMENTS):
            c[j] = a[j] + b[j]
    for j in range(m, n):
        c[j] = a[j] + b[j]


def triad_ahead(a, b, c, s):  # compiled by compiled(); plain Python here
    n = a.shape[0]
    m = n - n % LINE_ELEMENTS
    for i in range(0, m, LINE_ELEMENTS):
        prefetch(b, i + PREFETCH_ELEMENTS)
        prefetch(c, i + PREFETCH_ELEMENTS)
        for j in range(i, i + LINE_ELEMENTS):
            a[j] = b[j] + s * c[j]
    for j in range(m, n):
        a[j] = b[j] + s * c[j]


def read(a):  # compiled by compiled(); plain Python here
    total = 0.0
    for i in range(a.shape[0]):
        total += a[i] * a[i]
    return total


#: how many parts of its array the streaming read reads side by side
READ_STREAMS = 4


def read_streams(a):  # compiled by compiled(); plain Python here
    part = a.shape[0] // READ_STREAMS
    t0 = t1 = t2 = t3 = 0.0
    for i in range(part):  # four sequential streams at once, as a GEMV reads several rows
        t0 += a[i] * a[i]
        t1 += a[part + i] * a[part + i]
        t2 += a[2 * part + i] * a[2 * part + i]
        t3 += a[3 * part + i] * a[3 * part + i]
    for j in range(READ_STREAMS * part, a.shape[0]):
        t0 += a[j] * a[j]
    return t0 + t1 + t2 + t3


def _compile_prefetch() -> bool:
    """Give :func:`prefetch` its compiled form (numba's ``overload`` of it, over an intrinsic that emits
    ``llvm.prefetch``: read, keep in every cache level, data); False where this numba or LLVM cannot (the probe then
    runs the plain loops only)."""
    try:
        from llvmlite import ir
        from llvmlite.binding import llvm_version_info
        from numba import types
        from numba.core import cgutils
        from numba.extending import intrinsic, overload

        # the intrinsic's name carries its pointer type: opaque ``ptr`` from LLVM 15 on, ``i8*`` before
        name = "llvm.prefetch.p0" if llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"

        @intrinsic
        def _llvm_prefetch(typingctx, arr, index):
            def codegen(context, builder, signature, args):
                data = context.make_array(signature.args[0])(context, builder, args[0]).data
                byte_ptr = ir.IntType(8).as_pointer()
                i32 = ir.IntType(32)
                fn = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]), name)
                address = builder.bitcast(builder.gep(data, [args[1]]), byte_ptr)  # no bounds check: a hint
                builder.call(fn, [address, i32(0), i32(3), i32(1)])
                return context.get_dummy_value()
            return types.void(arr, types.intp), codegen

        @overload(prefetch)
        def _prefetch(arr, index):
            return lambda arr, index: _llvm_prefetch(arr, index)

        return True
    except Exception:  # an older or newer numba without these hooks
        return False


@functools.cache
def compiled() -> SimpleNamespace | None:
    """The kernels compiled by numba, or None when numba cannot be imported here (the probe then falls back to
    numpy): ``copy``, ``scale``, ``add``, ``triad``, ``read``, ``read_streams``, and where :func:`prefetch` compiles,
    the prefetching ``copy_ahead``, ``scale_ahead``, ``add_ahead`` and ``triad_ahead`` (each tried on a few elements
    first; a kernel that fails to compile or computes a wrong value is left out)."""
    _ask_for_256_bit_vectors()
    try:
        from numba import njit
    except Exception:  # numba missing, or broken for this Python/numpy
        return None
    plain = {"copy": copy, "scale": scale, "add": add, "triad": triad}
    kernels = {name: njit(**_OPTIONS)(fn) for name, fn in plain.items()}
    kernels["read"] = njit(fastmath=True, **_OPTIONS)(read)
    kernels["read_streams"] = njit(fastmath=True, **_OPTIONS)(read_streams)
    if _compile_prefetch():
        for name, fn in {"copy_ahead": copy_ahead, "scale_ahead": scale_ahead, "add_ahead": add_ahead,
                         "triad_ahead": triad_ahead}.items():
            kernel = njit(**_OPTIONS)(fn)
            if _works(name, kernel):
                kernels[name] = kernel
    return SimpleNamespace(**kernels)


def _works(name: str, kernel) -> bool:
    """Does the compiled prefetching kernel ``name`` compile and compute its plain twin's values (on an odd length,
    so the tail loop runs too)?"""
    import numpy as np

    n = 3 * LINE_ELEMENTS + 5
    ref = [np.arange(1.0, n + 1), np.arange(2.0, n + 2) * 0.5, np.arange(3.0, n + 3) * 0.25]
    got = [x.copy() for x in ref]
    twin = globals()[name.removesuffix("_ahead")]
    args = {"copy": (0, 2), "scale": (2, 1), "add": (0, 1, 2), "triad": (0, 1, 2)}[name.removesuffix("_ahead")]
    scalar = (3.0,) if name.startswith(("scale", "triad")) else ()
    try:
        kernel(*(got[i] for i in args), *scalar)
    except Exception:  # LLVM could not lower the prefetch here
        return False
    twin(*(ref[i] for i in args), *scalar)
    return all(np.array_equal(g, r) for g, r in zip(got, ref))
